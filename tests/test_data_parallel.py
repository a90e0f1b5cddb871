"""Data-parallel training stages (``train.devices``, ``train.accumulate``; ltrbench.parallel,
ltrbench.distributed, ltrbench.data.sharding) on the tiny built-in world, on CPUs with Gloo.

Fast: every sampler's global batches are the workers' slices in order (with the built-in world's
batch augmentation drawn for the global batch); ``accumulate: 2`` at batch 16 equals batch 16 for
the baseline; the key of a default recipe is unchanged; what is refused before any work (the
inline executor asked for N > 1, an uneven split, accumulation of CVLP's whole-batch loss).

Slow (one Ray Train group each, the costliest tests, so each checks more than one thing):
``cvlp`` on 2 workers at global batch 16, one worker killed mid-epoch, against one process at 16:
the group restarts from the epoch's checkpoint and ends with the same per-step losses and
weights (the all-gathered contrastive loss and distillation); ``finetune`` (baseline) on a
two-node ``ray.cluster_utils.Cluster``, one worker per node, against one process.

"The same weights to 1e-5" excludes one thing: the key bias of every attention layer (the middle
third of ``in_proj_bias``). Its gradient is zero in exact arithmetic (a bias added to every key
shifts each query's scores by one constant, which softmax ignores), so what it gets is rounding
noise, which Adam divides by its own root mean square into steps of about ±lr: two float32 runs
that sum a gradient in another order (two halves of a batch, or two micro-batches) drift apart
there by ~1e-4 and nowhere else, and it changes no output. Every other weight is compared to 1e-5.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ltrbench
from conftest import TINY, token_cluster
from ltrbench.data.batched import BatchLoader
from ltrbench.data.samplers import build_sampler
from ltrbench.data.sharding import shard_loader
from ltrbench.distributed import KILL_ENV
from ltrbench.errors import ConfigError
from ltrbench.execute import ExecOptions, execute
from ltrbench.planner import topological
from ltrbench.stages import artifact_dir, config_json, is_done, read_info
from ltrbench.train import STEP_LOSSES_ENV

BATCH16 = ["baseline.train.batch_size=16", "baseline.train.epochs=2"]
CVLP16 = ["cvlp.train.batch_size=16", "cvlp.train.epochs=2", "cvlp.beta=0.5"]  # β > 0: the teacher is gathered too
TOL = 1e-5


def planned(method: str, kind: str, extra: list[str]):
    p = ltrbench.plan(ltrbench.Request([method], "synthetic_lt", overrides=[*TINY, *extra]))
    return p.cache, next(s for s in p.stages if s.kind == kind)


def trained(cache: Path, stage, file: str) -> tuple[dict, dict[str, torch.Tensor]]:
    return read_info(cache, stage), torch.load(artifact_dir(cache, stage) / file, weights_only=True)


def single_process(method: str, kind: str, extra: list[str], file: str, monkeypatch):
    monkeypatch.setenv(STEP_LOSSES_ENV, "1")
    cache, stage = planned(method, kind, extra)
    ex = execute([stage], cache, executor="inline", progress=False)
    assert not ex.failures, ex.failures
    return trained(cache, stage, file)


def assert_same_training(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    """Per-step losses and final weights to :data:`TOL` (key biases aside: the module docstring)."""
    (ia, wa), (ib, wb) = a, b
    assert [r["samples"] for r in ia["history"]] == [r["samples"] for r in ib["history"]]
    for ra, rb in zip(ia["history"], ib["history"], strict=True):
        assert len(ra["step_losses"]) == len(rb["step_losses"]) > 1
        assert np.allclose(ra["step_losses"], rb["step_losses"], rtol=0, atol=TOL)
    assert wa.keys() == wb.keys()
    for name in wa:
        x, y = wa[name].float(), wb[name].float()
        if name.endswith("attn.in_proj_bias"):  # q, k, v biases: compare q and v
            third = x.shape[0] // 3
            x, y = torch.cat([x[:third], x[2 * third:]]), torch.cat([y[:third], y[2 * third:]])
        assert (x - y).abs().max().item() <= TOL, name


# --------------------------------------------------------------------------- fast


@pytest.mark.parametrize("sampler", ["instance", "sqrt", "class_aware"])
def test_every_global_batch_is_the_workers_slices_in_order(sampler):
    labels = np.repeat(np.arange(6), [40, 20, 9, 5, 3, 3])
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 8, 8, 3), dtype=np.uint8)

    def loader():
        smp = build_sampler(sampler, labels, seed=7)
        smp.set_epoch(3)
        return BatchLoader(images, torch.from_numpy(labels), batch_size=16, sampler=smp, augment="light",
                           image_size=8, eval_resize=8, mean=(0.5,) * 3, std=(0.5,) * 3, drop_last=True)

    torch.manual_seed(0)
    whole = list(loader())
    parts = []
    for rank in range(2):
        torch.manual_seed(0)  # every worker's generator is where the single process's is
        parts.append(list(shard_loader(loader(), rank, 2)))
    assert len(whole) == len(parts[0]) == len(parts[1]) == len(labels) // 16
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *parts):
        assert torch.equal(y, torch.cat([y0, y1]))  # the same images, in order ...
        assert torch.allclose(x, torch.cat([x0, x1]), atol=1e-6)  # ... with the same crops and flips


def test_the_heads_feature_loader_is_sharded_too():
    from ltrbench.config import TrainConfig
    from ltrbench.head_fit import feature_loader

    x, y = torch.randn(50, 4), torch.from_numpy(np.repeat(np.arange(5), 10))
    make = lambda: feature_loader(x, y, TrainConfig(batch_size=10, sampler="sqrt"), seed=1)  # noqa: E731
    whole = [b[1] for b in make()]
    halves = [[b[1] for b in shard_loader(make(), r, 2)] for r in range(2)]
    assert all(torch.equal(w, torch.cat([a, b])) for w, a, b in zip(whole, *halves, strict=True))


def test_accumulating_two_micro_batches_equals_the_batch_for_the_baseline(monkeypatch):
    one = single_process("baseline", "finetune", BATCH16, "model.pt", monkeypatch)
    two = single_process("baseline", "finetune", [*BATCH16, "baseline.train.accumulate=2"], "model.pt", monkeypatch)
    assert_same_training(one, two)
    assert two[0]["accumulate"] == 2 and two[0]["micro_batch"] == 8 and "accumulate" not in one[0]


def test_a_default_recipe_keeps_its_key_and_a_device_count_keeps_the_seed():
    _, plain = planned("baseline", "finetune", [])
    _, ones = planned("baseline", "finetune", ["baseline.train.devices=1", "baseline.train.accumulate=1"])
    _, two = planned("baseline", "finetune", ["baseline.train.devices=2"])
    assert plain.key == ones.key and "devices" not in json.dumps(config_json(plain.config))
    assert two.key != plain.key and two.seed == plain.seed  # another artifact, the same random draws
    assert config_json(two.config)["train"]["devices"] == 2


def test_the_inline_executor_refuses_a_data_parallel_stage_before_any_work(monkeypatch):
    sets = [*TINY, "baseline.train.devices=2", "baseline.train.epochs=1"]
    # plan_request reads the data sets (and would generate the built-in world): the refusal comes first
    import ltrbench.api  # imported on first use (ltrbench stays light)

    monkeypatch.setattr(ltrbench.api, "plan_request", lambda *a, **k: pytest.fail("planned (and so read the data set)"))
    with pytest.raises(ConfigError, match=r"baseline.train.devices=2: .*--executor ray"):
        ltrbench.run(ltrbench.Request(["baseline"], "synthetic_lt", overrides=sets))  # inline by default
    monkeypatch.undo()
    # The executor itself refuses it too (a library caller of execute), before any stage runs.
    cache, stage = planned("baseline", "finetune", sets[len(TINY):])
    needed = topological([stage])
    before = {s.key: is_done(cache, s) for s in needed}
    with pytest.raises(ConfigError, match=r"train.devices=2\).*--executor ray") as e:
        execute([stage], cache, executor="inline", progress=False)
    assert "Nothing was run" in str(e.value)
    assert {s.key: is_done(cache, s) for s in needed} == before  # not even the CLIP weights were built
    assert not any(artifact_dir(cache, s).with_name(s.key + ".partial").exists() for s in needed)


@pytest.mark.parametrize("sets, needle", [
    (["baseline.train.batch_size=15", "baseline.train.devices=2"],
     "baseline.train.batch_size=15: does not split evenly over 2 devices"),
    (["baseline.train.batch_size=16", "baseline.train.devices=2", "baseline.train.accumulate=3"],
     "baseline.train.batch_size=16: does not split evenly over 2 devices × 3 micro-batches"),
    (["baseline.train.devices=0"], "baseline.train.devices=0: must be at least 1"),
    (["cvlp.train.accumulate=2"], "cvlp.train.accumulate=2: CVLP's class-wise contrastive loss"),
])
def test_what_cannot_split_is_refused_before_any_work(sets, needle):
    with pytest.raises(ConfigError, match="Invalid configuration, nothing was run") as e:
        ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=[*TINY, *sets]))
    assert needle in str(e.value)
    if "cvlp" in needle:
        assert "cvlp.train.devices" in str(e.value)  # the way out: spread the batch over GPUs


# --------------------------------------------------------------------------- slow: one Ray Train group each


@pytest.mark.slow
@pytest.mark.ray
def test_cvlp_on_two_workers_one_killed_mid_epoch_equals_one_process(monkeypatch):
    from ltrbench.cluster import connect

    ref = single_process("vlltr", "cvlp", CVLP16, "weights.pt", monkeypatch)
    cache, stage = planned("vlltr", "cvlp", [*CVLP16, "cvlp.train.devices=2"])
    monkeypatch.setenv(KILL_ENV, "1:2:3")  # rank 1 dies before step 3 of epoch 2 (epoch 1 is checkpointed)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        connect(None, cache)  # the embedded Ray (this machine's CPUs)
        ex = execute([stage], cache, options=ExecOptions(executor="ray", retries=1, progress=False))
    finally:
        import ray

        ray.shutdown()
    assert not ex.failures, ex.failures
    info, weights = trained(cache, stage, "weights.pt")
    assert info["resumed_after_epoch"] == 1 and info["group_start"] == 2 and info["attempt"] == 1
    assert_same_training(ref, (info, weights))
    assert info["per_device_batch"] == 8 and info["devices"] == 2 and info["executor"] == "ray-train"
    assert sorted(w["rank"] for w in info["workers"]) == [0, 1]
    log = (artifact_dir(cache, stage).with_name(stage.key + ".log")).read_text()
    assert "group_start 1" in log and "group_start 2" in log  # the attempt's two starts of the group
    assert not (cache / ".ray_train" / f"cvlp-{stage.key}").exists()


@pytest.fixture
def two_nodes():
    """A head without CPUs and two nodes of one CPU each (token authentication on, as tests/test_ray.py
    starts it): a 2-worker group of one CPU per worker can only place one worker on each node."""
    mb = 200 * 2**20
    with token_cluster({"num_cpus": 0, "object_store_memory": mb}, {"num_cpus": 1, "object_store_memory": mb},
                       env={"OMP_NUM_THREADS": "1"}) as c:
        yield c


@pytest.mark.slow
@pytest.mark.ray
def test_finetune_on_two_nodes_one_worker_each_equals_one_process(two_nodes, monkeypatch, capsys):
    c, node_ids = two_nodes
    ref = single_process("baseline", "finetune", BATCH16, "model.pt", monkeypatch)
    cache, stage = planned("baseline", "finetune", [*BATCH16, "baseline.train.devices=2"])
    # --device cpu: on an external cluster ltrbench otherwise asks for GPUs (an autoscaler would add them)
    ex = execute([stage], cache, options=ExecOptions(executor="ray", address=c.address, device="cpu", progress=True))
    assert not ex.failures, ex.failures
    info, weights = trained(cache, stage, "model.pt")
    assert {w["node"] for w in info["workers"]} == node_ids  # one worker on each node
    assert info["group_start"] == 1 and "resumed_after_epoch" not in info
    assert_same_training(ref, (info, weights))
    out = capsys.readouterr().out  # the stage's progress lines: the group at the start, its workers at the end
    assert f"· {stage.describe()} on " in out and "2 workers × 1 CPU (data-parallel" in out
    assert f"✓ {stage.describe()}" in out and "on 2 workers (rank 0 " in out and "8 per device" in out
    assert is_done(cache, stage)
