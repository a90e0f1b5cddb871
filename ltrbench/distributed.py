"""Data-parallel training as the one loop sees it: which worker this process is, the whole-batch
collectives, and the fault switch of the data-parallel drills. torch.distributed only; the process
group itself is set up by Ray Train (:mod:`ltrbench.parallel`, the execution layer).

A process outside a group is worker 0 of 1 (:func:`shard`), and every function here is then the
identity of the single-process code, drawing the same random numbers.

* **Exactness.** N workers at per-device batch b together compute what one process computes at
  batch N·b. The loaders give worker r the r-th slice of every global batch
  (:mod:`ltrbench.data.sharding`), and every random draw that is per sample is drawn for the whole
  global batch on every worker, each keeping its slice (:func:`global_rand`, the built-in world's
  batch augmentation), so all workers' generators stay in step with the single-process run's.
* **Whole-batch losses** (CVLP's class-wise contrastive loss and its distillation, ALGORITHMS §1)
  see the global batch: :func:`gather` all-gathers the features with their gradient, as the
  official ``GatherLayer`` does (VL-LTR ``models/layers/GatherLayer.py``): every worker computes
  the same global loss L, and the gradient of its own slice is scaled by N, so that the average
  DistributedDataParallel takes over the N workers is the full dL/dθ of one process.
* **Faults.** ``LTRBENCH_KILL_WORKER=<rank>:<epoch>:<step>`` kills (SIGKILL) the worker of that
  rank when it is about to take that 1-based step of that 1-based epoch, once per cache and switch
  value (a marker in ``<cache>/.faults/``), for the drills and tests of the group's restart
  (:func:`fault_point`).
"""
from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

#: ``<rank>:<epoch>:<step>``: that worker kills itself before that step, once (:func:`fault_point`).
KILL_ENV = "LTRBENCH_KILL_WORKER"


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel group: worker ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    @property
    def parallel(self) -> bool:
        return self.world > 1


def shard() -> Shard:
    """Worker ``rank`` of ``world`` in the initialised process group, else worker 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 with a gradient: the slice of this rank's input, scaled by the world
    size (module docstring: every rank computes the same loss of the gathered batch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.n = rank, world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        lo = ctx.rank * ctx.n
        return grad[lo : lo + ctx.n] * ctx.world


def gather(x: torch.Tensor) -> torch.Tensor:
    """The global batch of ``x`` (every rank's rows, in rank order), with a gradient where ``x``
    has one; ``x`` itself outside a group."""
    if not shard().parallel:
        return x
    if x.requires_grad:
        return _Gather.apply(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def global_rand(n: int) -> torch.Tensor:
    """``n`` uniform numbers from torch's global generator for this rank's ``n`` samples: the
    draws of the whole global batch (N·n), this rank's slice kept, so that every rank's generator
    advances as the single process's does and the numbers are the single process's."""
    s = shard()
    if not s.parallel:
        return torch.rand(n)
    return torch.rand(n * s.world)[s.rank * n : (s.rank + 1) * n]


def broadcast(obj: Any, device: torch.device | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside a group)."""
    if not shard().parallel:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]


_WORD: list[bool | None] = [None]  # what rank 0 of this process's group said last (announce)


def announce(building: bool) -> None:
    """Rank 0 tells the group whether it builds the stage (:func:`hear` on the other ranks)."""
    broadcast(building)
    _WORD[0] = building


def hear() -> bool:
    """Rank 0's word on the other ranks: whether it builds the stage, so they run it with it."""
    return bool(broadcast(None))


def said() -> bool | None:
    """What this process last announced (None: nothing yet): after True, the other ranks are in
    the stage with it, so a failure must end the whole group rather than leave them waiting."""
    return _WORD[0]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The element-wise sum of ``values`` over the ranks (``values`` outside a group)."""
    if not shard().parallel:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def fault_point(epoch: int, step: int) -> None:
    """Kill this worker (SIGKILL) if :data:`KILL_ENV` names its rank, ``epoch`` and ``step`` (both
    1-based) and it has not killed itself there before (marker in ``<cache>/.faults/``)."""
    spec = os.environ.get(KILL_ENV)
    s = shard()
    if not spec or not s.parallel:
        return
    try:
        rank, at_epoch, at_step = (int(v) for v in spec.split(":"))
    except ValueError:
        raise ValueError(f"{KILL_ENV}={spec!r}: expected <rank>:<epoch>:<step>, e.g. 1:2:1") from None
    if (rank, at_epoch, at_step) != (s.rank, epoch, step):
        return
    folder = Path(os.environ.get("LTRBENCH_CACHE", ".")) / ".faults"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"kill-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    try:
        marker.open("x").close()  # exclusive create: only the first time
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
