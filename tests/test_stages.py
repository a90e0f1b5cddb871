import json
import socket
import time

import pytest

from ltrbench.execute import execute
from ltrbench.planner import topological
from ltrbench.stages import Stage, artifact_dir, is_done, stage_kind

CALLS: list[str] = []


@stage_kind("test_write", version="1")
def _write(ctx):
    CALLS.append(ctx.stage.config["name"])
    text = ctx.config["name"] + "".join((p / "out.txt").read_text() for p in ctx.paths.values())
    (ctx.out / "out.txt").write_text(text)
    return {"n": len(text)}


@stage_kind("test_fail", version="1")
def _fail(ctx):
    (ctx.out / "half.txt").write_text("half")
    raise RuntimeError("boom")


def test_key_depends_on_config_and_inputs_not_env():
    a = Stage("test_write", {"name": "a"}, env={"root": "/x"})
    a2 = Stage("test_write", {"name": "a"}, env={"root": "/y"})
    b = Stage("test_write", {"name": "b"})
    assert a.key == a2.key and a == a2
    assert a.key != b.key
    assert Stage("test_write", {"name": "c"}, (a,)).key != Stage("test_write", {"name": "c"}, (b,)).key


def test_equal_stages_of_two_runs_execute_once(tmp_path):
    CALLS.clear()
    shared = Stage("test_write", {"name": "s"})
    r1 = Stage("test_write", {"name": "r1"}, (Stage("test_write", {"name": "s"}),))
    r2 = Stage("test_write", {"name": "r2"}, (shared,))
    assert len(topological([r1, r2])) == 3
    infos = execute([r1, r2], tmp_path, progress=False).infos
    assert CALLS == ["s", "r1", "r2"]
    assert all(i["ran"] for i in infos.values())
    assert (artifact_dir(tmp_path, r2) / "out.txt").read_text() == "r2s"
    CALLS.clear()
    infos = execute([r1, r2], tmp_path, progress=False).infos
    assert CALLS == [] and not any(i["ran"] for i in infos.values())


def test_failed_stage_leaves_no_finished_artifact(tmp_path):
    s = Stage("test_fail", {"x": 1})
    ex = execute([s], tmp_path, progress=False, retries=0)
    assert set(ex.failures) == {s.key} and ex.failures[s.key].error == "RuntimeError: boom"
    assert not is_done(tmp_path, s)
    assert not artifact_dir(tmp_path, s).exists()
    assert artifact_dir(tmp_path, s).with_name(s.key + ".partial").exists()


def test_stage_json_records_config_and_inputs(tmp_path):
    a = Stage("test_write", {"name": "a"})
    b = Stage("test_write", {"name": "b"}, (a,))
    execute([b], tmp_path, progress=False)
    info = json.loads((artifact_dir(tmp_path, b) / "stage.json").read_text())
    assert info["config"] == {"name": "b"} and info["inputs"] == [a.key] and info["n"] == 2
    # where and when it ran, in unix seconds, and on which device (the worker's view)
    assert info["host"] == socket.gethostname() and info["device"].startswith("cpu")
    assert time.time() - 60 < info["started"] <= info["finished"] <= time.time()
    assert info["attempt"] == 1 and info["executor"] == "inline"


@stage_kind("test_slow", version="1")
def _slow(ctx):
    import os
    import time

    with open(ctx.config["log"], "a") as fh:
        fh.write(f"{os.getpid()}\n")
    time.sleep(1.0)
    (ctx.out / "out.txt").write_text("done")
    return {"pid": os.getpid()}


def _build_in_child(stage, cache, queue):
    from ltrbench.stages import run_stage

    queue.put(run_stage(stage, cache, progress=False)["pid"])


def test_two_processes_building_one_stage_build_it_once(tmp_path):
    """Two runs sharing a cache: the second waits for the first instead of training into its folder."""
    import multiprocessing as mp

    log = tmp_path / "calls.txt"
    stage = Stage("test_slow", {"log": str(log)})
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(stage, tmp_path / "cache", queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    pids = [queue.get(timeout=5) for _ in procs]
    assert len(log.read_text().split()) == 1  # built once
    assert pids[0] == pids[1]  # both report the one build
    assert (artifact_dir(tmp_path / "cache", stage) / "out.txt").read_text() == "done"


def test_a_file_system_without_locks_still_builds(tmp_path, monkeypatch):
    import errno
    import fcntl

    from ltrbench.stages import run_stage

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    stage = Stage("test_write", {"name": "unlocked"})
    assert run_stage(stage, tmp_path, progress=False)["n"] == len("unlocked")
