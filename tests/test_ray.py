"""The Ray executor: the embedded local cluster through the CLI, and a simulated cluster
(``ray.cluster_utils.Cluster``: a head and two nodes of one logical GPU each, token authentication
on) joined with --ray-address: two training stages placed one per GPU node at once, a stage failing
once retried, a stage failing always failing only its runs, a killed driver rerun without redoing
finished stages, and a sweep on Ray Tune.

Only the placement test asks for the nodes' GPUs (each GPU stage runs in a fresh process, about 10 s
of start-up per stage here); the others pass ``--device cpu``, whose stages run as CPU tasks in
workers reused from stage to stage: the same driver loop, retries and messages, in a fifth of the
time. The placement test runs the training stages alone (``execute``), not the whole method.
"""
import json
import signal
import subprocess
import sys
import time

import pytest

import ltrbench
from conftest import REPO, TINY, run_cli, tiny_set, token_cluster
from ltrbench.execute import ExecOptions, execute
from ltrbench.planner import topological
from ltrbench.stages import FAULT_ENV, is_done, read_info

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # a Ray cluster per module; the CLI run in-process

FAST = ["cvlp.train.epochs=1", "lgr.train.epochs=1", "cvlp.train.batch_size=64", "lgr.train.batch_size=64"]


def test_ray_executor_runs_vlltr_and_baseline_into_the_shared_cache(tmp_path):
    # A cache of its own: in the session's cache earlier tests may have built every stage, and
    # then Ray never starts (nothing to run), which is not what this test is about.
    cache = tmp_path / "cache"
    r = run_cli("--methods", "baseline,vlltr", "--executor", "ray", "--out", str(tmp_path / "out"), *tiny_set(FAST),
                env={"TQDM_DISABLE": "1", "LTRBENCH_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {json.loads(f.read_text())["method"]: json.loads(f.read_text())
            for f in (tmp_path / "out" / "runs").glob("*.json")}
    assert set(recs) == {"baseline", "vlltr"}
    for p in ltrbench.plan(ltrbench.Request(["baseline", "vlltr"], "synthetic_lt", overrides=[*TINY, *FAST])).runs:
        planned = {s.key for s in topological([p.target])}
        recorded = {s["key"] for s in recs[p.spec.method]["stages"]}
        assert recorded == planned  # the Ray path ran exactly the planned DAG ...
        for s in recs[p.spec.method]["stages"]:  # ... and its workers wrote every stage to the cache
            info = json.loads((cache / s["kind"] / s["key"] / "stage.json").read_text())
            if info.get("executor") == "ray":
                # this machine has no CUDA: no stage asked for a GPU, and the workers ran this checkout
                assert info["resources"].get("GPU", 0) == 0 and info["cuda_visible_devices"] == ""
                assert info["code"] == str(REPO / "ltrbench") and info["device"].startswith("cpu")
    assert recs["vlltr"]["device"].startswith("cpu")  # the result's device: its stages'
    # live progress: the cluster, then a line per stage start (node, device) and finish, with counts
    assert "Ray: embedded local cluster" in r.stdout
    assert any(line.startswith("· cvlp[") and " on " in line and "running" in line for line in r.stdout.splitlines())
    assert any(line.startswith("✓ cvlp[") for line in r.stdout.splitlines())


# --------------------------------------------------------------------------- a two-node cluster


@pytest.fixture(scope="module")
def cluster():
    """A head (no GPU) and two nodes of 2 CPUs and one logical GPU each, with token authentication."""
    with token_cluster({"num_cpus": 1, "num_gpus": 0}, {"num_cpus": 2, "num_gpus": 1}) as c:
        yield c


def _finetunes(seeds: list[int], sets: list[str]):
    """The plan's cache and the baseline's fine-tune stage of each seed (the stages a test runs alone)."""
    p = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", seeds=seeds, overrides=sets))
    return p.cache, [next(s for s in topological([t]) if s.kind == "finetune") for t in p.targets]


def test_two_training_stages_run_at_once_one_per_node(cluster):
    c, gpu_nodes = cluster
    cache, stages = _finetunes([0, 1], [*TINY, "baseline.train.epochs=6"])
    ex = execute(stages, cache, options=ExecOptions("ray", c.address, progress=False))
    assert not ex.failures, ex.failures
    a, b = [read_info(cache, s) for s in stages]
    assert {a["node"], b["node"]} == gpu_nodes  # one per GPU node (both nodes share this host's name)
    assert a["started"] < b["finished"] and b["started"] < a["finished"]  # at the same time
    for info in (a, b):
        assert info["resources"]["GPU"] == 1.0 and info["cuda_visible_devices"] == "0"  # its reserved GPU
        assert info["executor"] == "ray" and info["attempt"] == 1
        assert "working_dir_files" in info["code"]  # this checkout, shipped as the job's working_dir


def test_a_stage_failing_once_is_retried_and_the_run_succeeds(cluster, monkeypatch):
    c, _ = cluster
    monkeypatch.setenv(FAULT_ENV, "finetune:1")  # forwarded to the workers; counted in the cache
    cache, (stage,) = _finetunes([2], [*TINY, "baseline.train.epochs=2"])
    ex = execute([stage], cache, options=ExecOptions("ray", c.address, device="cpu", progress=False))
    assert not ex.failures, ex.failures
    ft = read_info(cache, stage)
    assert ft["attempt"] == 2 and ft["resumed_after_epoch"] == 2  # the retry resumed from the checkpoint
    log = (cache / "finetune" / f"{ft['key']}.log").read_text()
    assert "attempt 1 of finetune[baseline]" in log and "InjectedFault" in log and "attempt 2 of" in log


def test_a_stage_failing_always_fails_only_its_runs(cluster, tmp_path):
    c, _ = cluster
    r = run_cli("--methods", "baseline,zeroshot", "--seeds", "3", "--ray-address", c.address, "--device", "cpu",
                "--retries", "1", "--out", str(tmp_path), *tiny_set(["baseline.train.epochs=2"]),
                env={FAULT_ENV: "finetune", "TQDM_DISABLE": "1"})
    assert r.returncode == 1, r.stderr[-3000:]
    methods = [json.loads(p.read_text())["method"] for p in (tmp_path / "runs").glob("*.json")]
    assert methods == ["zeroshot"]  # the other run completed and wrote its result
    err = r.stderr[r.stderr.index("1 of 2 runs failed"):]
    assert "baseline · synthetic_lt · mini-clip · seed 3: stage finetune[baseline] key " in err
    assert "2 attempt(s): ltrbench.stages.InjectedFault" in err and "worker log on " in err
    assert "Traceback" not in r.stderr  # the tracebacks are in the stage's log, not on the terminal
    assert "✗ finetune[baseline] attempt 1/2 failed" in r.stdout and "giving up" in r.stdout
    assert "auth token" in r.stdout and "node(s) see the cache and --out" in r.stdout


def test_the_driver_killed_mid_plan_and_rerun_redoes_no_finished_stage(cluster, tmp_path):
    c, _ = cluster
    sets = [*TINY, "baseline.train.epochs=4"]
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", seeds=[4, 5], overrides=sets))
    proc = subprocess.Popen([sys.executable, str(REPO / "run_bench.py"), "--methods", "baseline", "--seeds", "4,5",
                             "--ray-address", c.address, "--device", "cpu", "--out", str(tmp_path), "--quiet",
                             *[a for t in sets for a in ("--set", t)]], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not any(s.kind == "finetune" and is_done(plan.cache, s) for s in plan.stages):
            assert proc.poll() is None and time.time() < deadline, "no training stage finished in time"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finished = {s.key: read_info(plan.cache, s)["started"] for s in plan.stages if is_done(plan.cache, s)}
    assert 0 < len(finished) < len(plan.stages)
    df = ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", seeds=[4, 5], overrides=sets),
                      ltrbench.ExecOptions(address=c.address, device="cpu", progress=False))
    assert list(df.frame["seed"]) == [4, 5]
    for s in plan.stages:
        if s.key in finished:  # not recomputed: the same artifact, started before the kill
            assert read_info(plan.cache, s)["started"] == finished[s.key]
    assert df.execution["executed"] <= len(plan.stages) - len(finished)


def test_a_sweep_on_the_cluster_prints_its_ranked_table(cluster, tmp_path):
    c, _ = cluster
    r = run_cli("sweep", "--method", "baseline", "--grid", "baseline.train.lr=0.001,0.003", "--seeds", "0",
                "--ray-address", c.address, "--device", "cpu", "--out", str(tmp_path), *tiny_set(),
                env={"TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout[r.stdout.index("| rank"):].split("\n\n")[0].strip().splitlines()
    assert len(table) == 4 and "baseline.train.lr" in table[0] and "val overall" in table[0]
    scores = [float(line.split("|")[5].split("±")[0]) for line in table[2:]]
    assert scores == sorted(scores, reverse=True)  # ranked
    (written,) = (tmp_path / "sweeps").glob("*/table.md")
    assert written.read_text().strip().splitlines() == table
    assert len(list((tmp_path / "sweeps").glob("*/runs/*.json"))) == 2  # a val result per trial
