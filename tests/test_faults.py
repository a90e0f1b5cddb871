"""What must keep holding when a run is interrupted or shares its folders (CLI subprocesses: slow):
SIGKILL mid-epoch resumes to identical metrics (and the stale .partial and lock file it leaves are
recovered), SIGINT exits 130 with one line (SIGTERM 143, on Ray too), two processes writing into one --out lose nothing.
(Same seed → identical metrics: tests/test_cli.py; stale folders in-process: tests/test_integrity.py.)"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ltrbench
from conftest import REPO, TINY, run_cli, tiny_set

pytestmark = pytest.mark.slow

EPOCHS = ["baseline.train.epochs=3"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A cache holding the tiny world and its mini-CLIP (what every test here starts from)."""
    cache = tmp_path_factory.mktemp("seeded") / "cache"
    old = os.environ["LTRBENCH_CACHE"]
    os.environ["LTRBENCH_CACHE"] = str(cache)
    try:
        ltrbench.run(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=TINY))
    finally:
        os.environ["LTRBENCH_CACHE"] = old
    return cache


def _copy(seeded: Path, dest: Path) -> Path:
    shutil.copytree(seeded, dest)
    return dest


def _default_sigint() -> None:
    # A suite started in the background of a non-interactive shell (nohup …&, some CI runners)
    # inherits SIGINT ignored, and so would the run: give the child the default disposition, as a
    # terminal's Ctrl-C would find it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(*args: str, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "LTRBENCH_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, str(REPO / "run_bench.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def _wait_for(pattern: str, root: Path, proc: subprocess.Popen, timeout: float = 600) -> Path:
    t0 = time.time()
    while time.time() - t0 < timeout:
        hits = list(root.glob(pattern))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {pattern} appeared: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear")


def _metrics(out: Path) -> dict:
    return {json.loads(f.read_text())["method"]: json.loads(f.read_text())["metrics"] for f in (out / "runs").glob("*.json")}


def test_sigkill_mid_epoch_resumes_to_identical_metrics(tmp_path, seeded):
    cache = _copy(seeded, tmp_path / "cache")
    args = ["--methods", "baseline", "--quiet", *tiny_set(EPOCHS)]
    proc = _start(*args, "--out", str(tmp_path / "killed"), cache=cache)
    last = _wait_for("finetune/*.partial/work/ckpt/last.pt", cache, proc)  # epoch 1 done: now inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL and last.is_file()
    partial = last.parents[2]
    assert partial.name.endswith(".partial") and partial.with_name(partial.name[:-8] + ".lock").is_file()
    r = run_cli(*args, "--out", str(tmp_path / "resumed"), env={"LTRBENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not partial.exists()  # the stale .partial became the artifact; the stale lock did not block
    fresh = run_cli(*args, "--out", str(tmp_path / "fresh"), env={"LTRBENCH_CACHE": str(_copy(seeded, tmp_path / "cache2"))})
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert _metrics(tmp_path / "resumed") == _metrics(tmp_path / "fresh")
    history = json.loads(next((cache / "finetune").glob("*/stage.json")).read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_sigint_exits_130_with_one_line(tmp_path, seeded):
    cache = _copy(seeded, tmp_path / "cache")
    # Many epochs, interrupted after the first: on an idle machine 3 tiny epochs can end before the signal.
    proc = _start("--methods", "baseline", "--quiet", "--out", str(tmp_path / "out"),
                  *tiny_set(["baseline.train.epochs=500"]), cache=cache)
    _wait_for("finetune/*.partial/work/ckpt/last.pt", cache, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted; finished stages are kept in the cache and a rerun resumes"]


@pytest.mark.ray
def test_sigterm_ends_a_ray_run_like_sigint_with_exit_143(tmp_path, seeded):
    cache = _copy(seeded, tmp_path / "cache")
    proc = _start("--methods", "baseline", "--quiet", "--executor", "ray", "--out", str(tmp_path / "out"),
                  *tiny_set(["baseline.train.epochs=500"]), cache=cache)
    _wait_for("finetune/*.partial/work/ckpt/last.pt", cache, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM); finished stages are kept in the cache and a rerun resumes" in err
    for native in ("Traceback", "Fatal Python error", "*** SIG", "core dumped", "Aborted"):
        assert native not in err, err[-3000:]


def test_two_processes_writing_into_one_out_lose_nothing(tmp_path, seeded):
    out, cache = tmp_path / "out", _copy(seeded, tmp_path / "cache")
    procs = [_start("--methods", "baseline,zeroshot", "--seeds", seed, "--quiet", "--out", str(out), *tiny_set(),
                    cache=cache) for seed in ("0", "1")]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    files = sorted(p.name for p in (out / "runs").iterdir())
    assert len(files) == 4 and all(f.endswith(".json") for f in files)  # 2 seeds × 2 methods, no temp file left
    for f in (out / "runs").iterdir():
        rec = json.loads(f.read_text())
        assert rec["seed"] in (0, 1) and rec["metrics"]["paper"]["overall"] is not None
    (table,) = (out / "tables").glob("*.md")  # the same table name: one complete file, never a mix
    assert table.read_text().count("### synthetic_lt") == 2
