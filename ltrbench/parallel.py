"""Data-parallel training stages on Ray Train: one stage across N devices and nodes.

Part of the execution layer (with :mod:`ltrbench.execute`, :mod:`ltrbench.cluster` and
:mod:`ltrbench.sweep`, the only modules that import ray). A stage whose training recipe asks for
``train.devices: N`` > 1 (:func:`ltrbench.stages.stage_devices`) is run by the Ray executor as one
Ray Train run (Ray 2.60, Train V2): a ``TorchTrainer`` with N workers, whose ``ScalingConfig``
reserves one GPU per worker where GPUs are used (else CPUs) and the CPUs and memory the stage's
kind asks for (:func:`ltrbench.execute.stage_resources`, per worker). Ray Train places the N
workers together in one placement group (``PACK``: on as few nodes as hold them, across nodes when
one node has too few) and sets up the process group: NCCL on GPUs, Gloo on CPUs.

Every worker runs the stage function itself, so the one training loop stays the one loop
(:func:`ltrbench.train.fit` does the data-parallel part: sharded batches, DistributedDataParallel,
rank-0 checkpoints):

* rank 0 builds the stage as any executor does (:func:`ltrbench.execute.attempt_stage`: the lock,
  the ``.partial`` folder with the per-epoch checkpoint, ``stage.json``), and records the group:
  ``workers`` (rank, host, node, device of each) beside the per-device batch the loop records;
* the other ranks run it into a scratch folder (:func:`ltrbench.stages.follow_stage`) and step with
  rank 0 inside the loop; what they write is thrown away.

Faults: a worker that raises or dies (killed, out of memory, its node lost) fails the group; Ray
Train restarts the whole group, up to ``FailureConfig(max_failures)`` = the stage's retries left
(``--retries`` less the attempts already made), and rank 0 resumes from the last per-epoch
checkpoint, so the stage ends with the weights an uninterrupted run ends with. Once those are
spent the attempt fails and is not retried again. A user error on rank 0 before training
(:class:`~ltrbench.errors.LtrBenchError`) ends the group at once and is not retried.

Ray Train keeps its own run records under ``<cache>/.ray_train/<kind>-<key>/`` (shared storage on
a cluster, as the cache is), removed when the stage has finished.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from .cluster import task_env
from .devices import DEVICE_ENV, describe
from .distributed import said
from .stages import Stage, follow_stage, stage_devices

#: Ray Train's run records of a data-parallel stage live under ``<cache>/<RUNS>/``.
RUNS = ".ray_train"


class GroupAttemptFailed(RuntimeError):
    """Rank 0's attempt at a data-parallel stage failed: Ray Train restarts the group."""


def _worker(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Ray Train's per-worker function: rank 0 builds the stage, the others follow it."""
    import ray  # here: runs in a Ray Train worker, which has ray imported anyway
    import ray.train  # here: as above
    import torch.distributed as dist  # here: the process group exists only in a Ray Train worker

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    use_gpu = bool(config["use_gpu"])
    if use_gpu:
        from ray.train.torch import get_device  # here: as above

        dev = get_device()
        torch.cuda.set_device(dev)  # torch.device("cuda") is this worker's GPU from now on
    else:
        dev = torch.device("cpu")
    env = {**config["env"], DEVICE_ENV: "cuda" if use_gpu else "cpu"}
    with task_env(env, config["threads"], exclusive=True):
        me = {"rank": rank, "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
              "device": describe(dev), "local_rank": ctx.get_local_rank(), "pid": os.getpid()}
        workers: list[Any] = [None] * ctx.get_world_size()
        dist.all_gather_object(workers, me)
        stage: Stage = config["stage"]
        cache = Path(config["cache"])
        if rank != 0:
            follow_stage(stage, cache)
            return None
        where = {**config["where"], "host": me["host"], "node": me["node"], "executor": "ray-train",
                 "group_start": _count_start(Path(config["runs"])), "workers": workers,
                 "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        res = config["attempt_fn"](stage, cache, int(config["attempt"]), where, False)
        # A failure the other ranks may be waiting on (they are in the stage: rank 0 said so), or one
        # another attempt may mend, ends the group, which Ray Train restarts (max_failures); a user
        # error before the stage began (the others sent home) is the attempt's result, not retried.
        if not res["ok"] and (res["retry"] or said()):
            raise GroupAttemptFailed(res["error"])
        return res


def _count_start(folder: Path) -> int:
    """The how-many-th start of this attempt's group this is (1, then 2 after a restart ...), counted
    in the group's Ray Train folder, so the stage's log and ``stage.json`` tell restarts apart."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / "ltrbench-starts"
    n = int(counter.read_text() or 0) + 1 if counter.is_file() else 1
    counter.write_text(str(n))
    return n


def run_group(stage: Stage, cache: Path, attempt: int, *, attempt_fn: Callable[..., dict[str, Any]],
              env: Mapping[str, str], per_worker: Mapping[str, Any], use_gpu: bool, retries_left: int,
              where: Mapping[str, Any]) -> dict[str, Any]:
    """One attempt at a data-parallel stage: a TorchTrainer of ``stage_devices(stage)`` workers,
    each with ``per_worker`` resources (``num_cpus``, ``memory`` in bytes; a GPU each with
    ``use_gpu``), restarted up to ``retries_left`` times; rank 0 builds the stage with
    ``attempt_fn`` (the executor's one attempt, :func:`ltrbench.execute.attempt_stage`, passed in
    so that this module needs no import of the executor). Returns what ``attempt_fn`` returns
    (``ok`` and ``info``, or the error)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # here: importing Ray Train takes seconds
    from ray.train.torch import TorchConfig, TorchTrainer  # here: as above

    n = stage_devices(stage)
    cpus = max(1.0, float(per_worker.get("num_cpus", 1.0)))
    resources: dict[str, float] = {"CPU": cpus}
    if use_gpu:
        resources["GPU"] = 1.0
    if per_worker.get("memory"):
        resources["memory"] = float(per_worker["memory"])
    runs = Path(cache) / RUNS
    name = f"{stage.kind}-{stage.key}"
    shutil.rmtree(runs / name, ignore_errors=True)  # a group left by an earlier attempt: its count is not ours
    config = {"stage": stage, "cache": str(cache), "attempt": attempt, "attempt_fn": attempt_fn, "env": dict(env),
              "runs": str(runs / name), "use_gpu": use_gpu,
              "threads": max(1, int(cpus)), "where": dict(where)}
    trainer = TorchTrainer(
        _worker, train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=n, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy="PACK"),
        run_config=RunConfig(name=name, storage_path=str(runs),
                             failure_config=FailureConfig(max_failures=max(0, retries_left))))
    handler = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray Train's TrainingFailedError (its restarts spent) and kin
        return {"ok": False, "retry": False, "error": f"the data-parallel group of {n} failed after {retries_left} "
                f"restart(s): {_last_line(e)}", "log": None}
    finally:
        if handler is not None:  # Ray Train installs its own SIGINT handler in the caller's main thread
            signal.signal(signal.SIGINT, handler)
    shutil.rmtree(runs / name, ignore_errors=True)
    out = result.return_value
    if not isinstance(out, dict):
        return {"ok": False, "retry": True, "error": "rank 0 of the data-parallel group returned no result", "log": None}
    return out


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
    return f"{type(e).__name__}: {text}"[:400]


def group_stage(stage: Stage, cache: str, attempt: int, attempt_fn: Callable[..., dict[str, Any]],
                env: dict[str, str], per_worker: dict[str, Any], use_gpu: bool,
                retries_left: int) -> Iterator[dict[str, Any]]:
    """The body of the Ray generator task that launches a data-parallel stage (the executor's
    counterpart of a stage's own task): where it starts, then the group's result."""
    import ray  # here: runs in a Ray worker, which has ray imported anyway

    n = stage_devices(stage)
    ctx = ray.get_runtime_context()
    host, node = socket.gethostname(), ctx.get_node_id()
    kind = "GPU" if use_gpu else "CPU"
    yield {"event": "start", "host": host, "node": node,
           "device": f"{n} workers × 1 {kind} (data-parallel, {per_worker.get('num_cpus', 1):g} CPU each)"}
    res = run_group(stage, Path(cache), attempt, attempt_fn=attempt_fn, env=env, per_worker=per_worker, use_gpu=use_gpu,
                    retries_left=retries_left, where={"launcher": {"host": host, "node": node}})
    yield {"event": "result", **res, "where": f"{host} (node {node[:8]}), {n} workers"}


def describe_workers(info: Mapping[str, Any]) -> str:
    """The group of a data-parallel stage's ``stage.json`` in one line (empty for any other stage)."""
    workers = info.get("workers") or []
    if not workers:
        return ""
    parts = [f"rank {w['rank']} {w['host']} {w['device']}" for w in sorted(workers, key=lambda w: w["rank"])]
    batch = info.get("per_device_batch")
    return f"{len(workers)} workers ({'; '.join(parts)})" + (f", {batch} per device" if batch else "")
