"""The execution layer without a cluster: failures isolated per run, retries with each attempt in the
stage's log, the fault-injection switch, devices and resources per stage, what a Ray worker gets
from the driver, the storage probe's check and the cluster preflight's errors. The Ray executor
itself on a two-node cluster is tests/test_ray.py (slow)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ltrbench
from conftest import REPO, TINY
from ltrbench import cli
from ltrbench.cluster import check_shared, forwarded_env, runtime_env
from ltrbench.devices import DEVICE_ENV, stage_device
from ltrbench.errors import ConfigError, LtrBenchError, RunFailedError
from ltrbench.execute import _task_env, execute, attempts_log, stage_resources
from ltrbench.stage_kinds import ClipWeightsConfig
from ltrbench.planner import topological
from ltrbench.stages import FAULT_ENV, Stage, artifact_dir, fault_plan, is_done, stage_kind

CALLS: list[str] = []


@stage_kind("test_exec_write", version="1")
def _write(ctx):
    CALLS.append(ctx.config["name"])
    if ctx.config.get("boom"):
        raise RuntimeError(f"boom in {ctx.config['name']}\nsecond line of the message")
    (ctx.out / "out.txt").write_text(ctx.config["name"])
    return {"device_env": os.environ.get(DEVICE_ENV)}


@stage_kind("test_exec_user_error", version="1")
def _user_error(ctx):
    CALLS.append("user")
    raise ConfigError("a user error: no retry can fix it")


def test_a_failed_stage_fails_only_the_stages_that_need_it(tmp_path):
    CALLS.clear()
    a = Stage("test_exec_write", {"name": "a"})
    bad = Stage("test_exec_write", {"name": "bad", "boom": True}, (a,))
    after_bad = Stage("test_exec_write", {"name": "after_bad"}, (bad,))
    other = Stage("test_exec_write", {"name": "other"}, (a,))
    ex = execute([after_bad, other], tmp_path, progress=False, retries=1)
    assert CALLS.count("bad") == 2 and "after_bad" not in CALLS  # tried twice; its user never started
    assert set(ex.infos) == {a.key, other.key} and is_done(tmp_path, other)
    f = ex.failures[bad.key]
    assert (f.kind, f.attempts, f.error) == ("test_exec_write", 2, "second line of the message")
    assert ex.failure_of(topological([after_bad])) is f and ex.failure_of(topological([other])) is None
    log = attempts_log(tmp_path, bad).read_text()  # every attempt, with where it ran and its traceback
    assert log.count(f"attempt 1 of {bad.describe()}") == 1 and log.count("attempt 2 of") == 1
    assert log.count("RuntimeError: boom in bad") == 2 and f"host {socket.gethostname()}" in log


def test_a_user_error_is_not_retried(tmp_path):
    CALLS.clear()
    s = Stage("test_exec_user_error", {"x": 1})
    ex = execute([s], tmp_path, progress=False, retries=3)
    assert CALLS == ["user"] and ex.failures[s.key].attempts == 1
    assert ex.failures[s.key].error == "ltrbench.errors.ConfigError: a user error: no retry can fix it"


def test_the_fault_switch_fails_the_first_n_attempts_counted_across_processes(tmp_path, monkeypatch):
    assert fault_plan("finetune:2, cvlp") == {"finetune": 2, "cvlp": None}
    with pytest.raises(LtrBenchError, match="not <kind>"):
        fault_plan("finetune:x")
    CALLS.clear()
    s = Stage("test_exec_write", {"name": "flaky"})
    monkeypatch.setenv(FAULT_ENV, "test_exec_write:2")
    ex = execute([s], tmp_path, progress=False, retries=1)  # two attempts, both injected failures
    assert ex.failures[s.key].error.startswith(f"ltrbench.stages.InjectedFault: {FAULT_ENV}=test_exec_write:2")
    ex = execute([s], tmp_path, progress=False, retries=1)  # the count goes on: attempt 3 succeeds
    assert not ex.failures and ex.infos[s.key]["attempt"] == 1  # (the first attempt of this execution)
    assert (tmp_path / ".faults" / f"{s.key}.count").read_text() == "3"
    assert CALLS == ["flaky"] * 3


def test_a_retried_training_stage_resumes_from_its_checkpoint_with_the_same_result(tmp_path, monkeypatch):
    """The drill's failure comes after the stage's work and before its artifact is committed, as a
    crash at the worst moment would: the retry resumes after the last epoch and gives the same model."""
    clean = ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))  # the session cache
    first = Path(os.environ["LTRBENCH_CACHE"])
    for name in ("clip_weights", "worlds"):
        shutil.copytree(first / name, tmp_path / name)
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv(FAULT_ENV, "finetune:1")
    df = ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    (ft,) = [s for s in df.records[0]["stages"] if s["kind"] == "finetune"]
    info = json.loads((tmp_path / "finetune" / ft["key"] / "stage.json").read_text())
    assert info["attempt"] == 2 and info["resumed_after_epoch"] == 1  # TINY: one epoch
    assert df.records[0]["metrics"] == clean.records[0]["metrics"]
    assert df.records[0]["per_class_accuracy"] == clean.records[0]["per_class_accuracy"]


def test_run_returns_the_completed_runs_and_raises_with_the_failed_ones(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "finetune")  # every attempt of every finetune stage fails
    sets = [*TINY, "baseline.train.lr=0.002"]  # a finetune stage no other test has built
    with pytest.raises(RunFailedError) as err:
        ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", overrides=sets), ltrbench.ExecOptions(retries=0, out=tmp_path / "out", progress=False))
    e = err.value
    assert list(e.frame["method"]) == ["zeroshot"] and len(e.failures) == 1
    f = e.failures[0]
    assert (f["method"], f["seed"], f["stage"], f["attempts"]) == ("baseline", 0, "finetune", 1)
    assert f["error"].startswith("ltrbench.stages.InjectedFault") and Path(f["log"]).is_file()
    assert f"baseline · synthetic_lt · mini-clip · seed 0: stage finetune[baseline] key {f['key']}" in str(e)
    assert [json.loads(p.read_text())["method"] for p in (tmp_path / "out" / "runs").glob("*.json")] == ["zeroshot"]
    df = ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", overrides=sets), ltrbench.ExecOptions(retries=0, progress=False), raise_on_failure=False)
    assert list(df.frame["method"]) == ["zeroshot"] and df.failures[0]["key"] == f["key"]
    assert df.execution["failed_runs"] == 1


def test_the_cli_summarises_failed_runs_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(FAULT_ENV, "finetune")
    argv = ["--methods", "baseline,zeroshot", "--out", str(tmp_path), "--quiet", "--retries", "0",
            *[a for t in [*TINY, "baseline.train.lr=0.002"] for a in ("--set", t)]]
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert "| zeroshot " in out and "| baseline " not in out  # the completed run's table
    assert err.startswith("1 of 2 runs failed") and "seed 0: stage finetune[baseline] key " in err
    assert "InjectedFault" in err and "log: " in err and "finetune/" in err


def test_devices_are_chosen_in_the_process_that_runs_the_stage(tmp_path, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert stage_device().type == "cpu"
    if not __import__("torch").cuda.is_available():
        monkeypatch.setenv(DEVICE_ENV, "cuda")
        with pytest.raises(LtrBenchError, match="sees no CUDA device"):
            stage_device()
        with pytest.raises(ConfigError, match="no CUDA device"):
            execute([Stage("test_exec_write", {"name": "cuda"})], tmp_path, device="cuda", progress=False)
    # a stage that reserved no GPU (every test stage kind) computes on the CPU, told so by the executor
    monkeypatch.delenv(DEVICE_ENV)
    ex = execute([Stage("test_exec_write", {"name": "dev"})], tmp_path, progress=False)
    (info,) = ex.infos.values()
    assert info["device_env"] == "cpu" and info["device"].startswith("cpu") and DEVICE_ENV not in os.environ


def test_resources_follow_the_stage(monkeypatch):
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=[*TINY, "data.num_workers=3"]))
    by_kind = {s.kind: s for s in plan.stages}
    ft = stage_resources(by_kind["finetune"], gpus_used=True)
    assert ft == {"num_cpus": 4.0, "num_gpus": 1.0, "memory": int(5.5 * 2**30)}  # 3 loader workers + 1
    ev = stage_resources(by_kind["evaluate"], gpus_used=True)  # reads no images: no loader workers
    assert ev == {"num_cpus": 1.0, "num_gpus": 0.25, "memory": 2 * 2**30}
    assert stage_resources(by_kind["finetune"], gpus_used=False)["num_gpus"] == 0.0
    assert stage_resources(by_kind["finetune"], gpus_used=True, cpus_per_stage=2)["num_cpus"] == 2.0
    capped = stage_resources(by_kind["finetune"], gpus_used=True, caps={"CPU": 2, "memory": 2**30})
    assert capped["num_cpus"] == 2.0 and capped["memory"] == 2**30
    # clip_weights asks for a GPU only where it trains (the built-in mini-CLIP), not to convert a file
    clip = by_kind["clip_weights"]
    assert stage_resources(clip, gpus_used=True)["num_gpus"] == 1.0
    converted = Stage("clip_weights", dataclasses.replace(clip.config, pretrained="openai", generated={}), env=clip.env)
    assert stage_resources(converted, gpus_used=True)["num_gpus"] == 0.0


def test_a_ray_worker_gets_exactly_the_drivers_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", "/hf")
    monkeypatch.setenv("TORCH_HOME", "/th")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("UNRELATED_VAR", "x")
    env = forwarded_env(Path("rel/cache"))
    assert {"HF_HOME", "TORCH_HOME", "TQDM_DISABLE"} <= set(env) and "UNRELATED_VAR" not in env
    assert env["LTRBENCH_CACHE"] == str(Path("rel/cache").absolute())
    # a reused worker drops what an earlier plan forwarded, and gets it back afterwards
    monkeypatch.setenv("LTRBENCH_FAIL_STAGE", "stale")
    with _task_env(env, 1, exclusive=True):
        assert "LTRBENCH_FAIL_STAGE" not in os.environ and os.environ["HF_HOME"] == "/hf"
    assert os.environ["LTRBENCH_FAIL_STAGE"] == "stale"
    embedded, how = runtime_env(tmp_path, embedded=True, ship_code=True)
    assert embedded["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO) and "PYTHONPATH" in how
    external, _ = runtime_env(tmp_path, embedded=False, ship_code=True)
    assert external["working_dir"] == str(REPO) and ".git" in external["excludes"]
    bare, how = runtime_env(tmp_path, embedded=False, ship_code=False)
    assert "working_dir" not in bare and "PYTHONPATH" not in bare["env_vars"] and "not shipped" in how


def test_the_storage_probe_names_what_a_worker_cannot_see(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".ltrbench-probe-tok").write_text("tok")
    assert check_shared({"LTRBENCH_CACHE": str(tmp_path / "cache")}, "tok") == {}
    problems = check_shared({"LTRBENCH_CACHE": str(tmp_path / "cache"), "--out": str(tmp_path / "elsewhere")}, "tok")
    assert list(problems) == ["--out"] and "is not visible here" in problems["--out"]


@pytest.mark.slow  # a CLI subprocess
def test_an_unreachable_cluster_fails_within_seconds_saying_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    sets = [*TINY, "baseline.train.lr=0.0011"]  # a stage to run: a plan with nothing to do needs no cluster
    r = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--methods", "baseline", "--out", str(tmp_path),
                        "--quiet", "--ray-address", f"127.0.0.1:{port}", *[a for t in sets for a in ("--set", t)]],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and time.time() - t0 < 60  # start-up included; the check itself is 2 s
    last = r.stderr.strip().splitlines()[-1]  # (the world's generation bar may come first in a new cache)
    assert last.startswith(f"error: Cannot reach a Ray cluster at 127.0.0.1:{port}") and "ray start --head" in last
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("grid, needle", [
    ("baseline.train.lr", "expected KEY=V1,V2,..."),
    ("baseline.train.epochz=1,2", "unknown config key 'baseline.train.epochz'"),
    ("baseline.train.epochs=1,many", "must be an integer"),
])
def test_a_bad_sweep_is_one_error_before_ray_starts(tmp_path, capsys, grid, needle):
    argv = ["sweep", "--method", "baseline", "--grid", grid, "--out", str(tmp_path), "--quiet",
            *[a for t in TINY for a in ("--set", t)]]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (a new cache's world bar may come first)
    assert err.startswith("error: ") and needle in err
    assert not (tmp_path / "sweeps").exists()
    import ray

    assert not ray.is_initialized()


def test_which_stages_ask_for_gpus_depends_on_the_cluster_not_its_gpus_now():
    import torch

    from ltrbench.cluster import Connection
    from ltrbench.execute import ExecOptions, _stage_device, gpu_policy

    node = {"id": "n", "host": "h", "resources": {"CPU": 4.0, "memory": 8.0 * 2**30}}  # no GPU now
    external = Connection("head:6379", "token", "working_dir", nodes=[node], resources={"CPU": 4.0})
    assert gpu_policy(external, ExecOptions("ray", "head:6379")) == (True, None)  # an autoscaler may add GPUs
    assert gpu_policy(external, ExecOptions("ray", "head:6379", device="cpu"))[0] is False
    embedded = Connection(None, "token", "PYTHONPATH", nodes=[node], resources={"CPU": 4.0})
    assert gpu_policy(embedded, ExecOptions("ray")) == (torch.cuda.is_available(), {"CPU": 4.0, "memory": 8.0 * 2**30})
    by_caller = Connection(None, "token", "by the caller", by_caller=True, nodes=[node], resources={"CPU": 4.0})
    assert gpu_policy(by_caller, ExecOptions("ray"))[0] is False
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=TINY))
    ft = next(s for s in plan.stages if s.kind == "finetune")
    converted = Stage("clip_weights", ClipWeightsConfig("mini-clip", "openai"))
    assert _stage_device(ft, ExecOptions("ray", device="auto"), gpus_used=True) == "auto"
    assert _stage_device(ft, ExecOptions("ray", device="cuda"), gpus_used=True) == "cuda"
    assert _stage_device(ft, ExecOptions("ray", device="auto"), gpus_used=False) == "cpu"
    assert _stage_device(converted, ExecOptions("ray", device="cuda"), gpus_used=True) == "cpu"  # reserved none


def test_shipped_code_holds_the_paper_numbers_and_no_run_outputs(tmp_path):
    """An external cluster's workers get the checkout as working_dir: the code and
    results/paper_numbers.csv (the tables module reads it), not results/runs/ or the cache."""
    from ray._private.runtime_env.packaging import _get_excludes

    from ltrbench.cluster import project_root, runtime_env

    root = project_root()
    env, _how = runtime_env(root / ".cache-in-checkout", embedded=False, ship_code=True)
    excluded = _get_excludes(root, env["excludes"])

    def shipped(rel: str) -> bool:  # Ray skips an excluded folder's whole subtree
        parts = Path(rel).parts
        return not any(excluded(root / Path(*parts[:i])) for i in range(1, len(parts) + 1))

    assert shipped("ltrbench/tables.py") and shipped("methods/vlltr.py") and shipped("configs/tables/table1.yaml")
    assert shipped("results/paper_numbers.csv") and shipped("datasets/miniclip/mini-clip-builtin.pt")
    assert not shipped("results/runs/a.json") and not shipped("results/report/report.html")
    assert not shipped(".cache-in-checkout/finetune/x/model.pt") and not shipped(".git/HEAD")


def test_the_execute_step_runs_on_the_ray_it_is_handed_or_refuses(tmp_path):
    """ltrbench.run connects to Ray (and probes the nodes) before the execute step; run_ordered never
    connects itself, so a ray execution without a connection is a programming error, said at once."""
    from ltrbench.execute import ExecOptions, run_ordered

    s = Stage("test_exec_write", {"name": "handed"})
    with pytest.raises(ValueError, match="connect_for"):
        run_ordered([s], tmp_path, frozenset(), ExecOptions(executor="ray"))
    assert not is_done(tmp_path, s)
    ex = run_ordered([s], tmp_path, frozenset(), ExecOptions(progress=False))  # inline: no connection needed
    assert ex.executed == 1 and is_done(tmp_path, s)
