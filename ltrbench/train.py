"""The one training loop. Every method that trains (baseline, CVLP, cRT, LWS, LGR, FC, mini-CLIP)
brings a :class:`TrainTask` (its module, its loss, its parameter groups) and calls :func:`fit`.

What the loop owns: the optimiser (AdamW or SGD), timm's cosine schedule stepped once per epoch
(docs/algorithms.md#cosine-schedule: warm-up from 1e-6, the cosine on the raw epoch, the official off-by-one via
``schedule_shift``), mixed precision on CUDA (``train.amp``: bf16 autocast, or fp16 autocast with
``torch.amp.GradScaler`` as the official codes run), the per-epoch sampler reseed, a checkpoint
every epoch (``last.pt``, written atomically) and resume from it, optional best-epoch selection
on val, and a progress bar. Checkpoints hold tensors and plain values only and are read with
``torch.load(weights_only=True)``: a file planted in a shared cache cannot run code. A resume
checkpoint that cannot be read or applied (truncated, foreign, tampered with) is discarded with a
warning and the training restarts from epoch 0, exactly as a fresh run. Weight decay is 0 for 1-D tensors and biases, as timm's
``param_groups_weight_decay`` does in the official code (a 0-D ``logit_scale`` is decayed).

Data-parallel training (``train.devices`` > 1) is this loop in every worker of a group that Ray
Train starts (:mod:`ltrbench.parallel`): each worker takes its slice of every global batch, the
module runs under DistributedDataParallel, rank 0 alone owns the checkpoint files, and losses that
need the whole batch gather it (:mod:`ltrbench.distributed`). ``train.accumulate`` splits each
device's batch into micro-batches with one optimizer step per batch; a task whose loss needs the
whole batch (``whole_batch = True``, CVLP) refuses it. Outside a group, with both at 1, the loop
runs exactly as it did before they existed (the same operations, the same numbers).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import numpy as np
import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import TrainConfig
from .data.sharding import shard_loader
from .distributed import Shard, all_sum, broadcast, fault_point, shard
from .errors import ConfigError, LtrBenchError

log = logging.getLogger(__name__)

#: The optimisers :func:`build_optimizer` knows (``train.optimizer``).
OPTIMIZERS = ("adamw", "sgd")
#: Set (to anything) to record every step's loss in the history rows (``step_losses``): for the
#: exactness checks of data-parallel training and for debugging, not in every stage.json.
STEP_LOSSES_ENV = "LTRBENCH_STEP_LOSSES"
#: The GPUs of the official recipes' runs (VL-LTR: 8 × 256 for CVLP on RN50, 8 × 128 for LGR and
#: the baseline), for the BatchNorm note of :func:`batchnorm_note`.
OFFICIAL_DEVICES = 8


class TrainTask(Protocol):
    """What a method gives the loop."""

    module: nn.Module  # everything trained and checkpointed

    def param_groups(self) -> list[dict[str, Any]]:
        """Groups of named parameters: ``{"params": [(name, p), ...], "lr_scale": 1.0}``.

        Optional keys: ``lr``, ``weight_decay`` and ``decay_all`` (decay biases and 1-D tensors too).
        """

    def set_mode(self) -> None:
        """Put modules in train/eval mode for an epoch (frozen BatchNorm stays in eval)."""

    def loss(self, batch: Any) -> torch.Tensor:
        """The loss of one batch (already on the device)."""

    def validate(self) -> float | None:
        """Val accuracy for best-epoch selection, or None."""

    # Optional: ``set_epoch(epoch)`` (0-based), called at the start of every epoch, resumed ones
    # included, for a task whose loss depends on the epoch (LDAM's deferred re-weighting); and
    # ``whole_batch = True`` for a loss of the whole batch at once (CVLP's contrastive loss): no
    # micro-batches (train.accumulate), and in a data-parallel group it gathers the batch itself.


def split_weight_decay(
    named: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict[str, Any]]:
    """timm's rule: no decay for 1-D tensors and biases (0-D tensors are decayed)."""
    decay, no_decay = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
    groups = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def build_optimizer(task: TrainTask, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = []
    for g in task.param_groups():
        lr = g.get("lr", cfg.effective_lr * g.get("lr_scale", 1.0))
        wd = g.get("weight_decay", cfg.weight_decay)
        # ``decay_all``: weight decay on every parameter, biases and 1-D tensors included, as the
        # decoupling code's plain SGD does (docs/algorithms.md#lws: LWS's scales are decayed).
        subs = ([{"params": [p for _, p in g["params"] if p.requires_grad], "weight_decay": wd}]
                if g.get("decay_all") else split_weight_decay(g["params"], wd))
        for sub in (s for s in subs if s["params"]):
            sub["lr"] = lr
            groups.append(sub)
    if not groups:
        raise ConfigError("Nothing to train: every parameter of the task is frozen.")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.effective_lr, betas=(0.9, 0.999), eps=1e-8)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.effective_lr, momentum=cfg.momentum)
    raise ConfigError(f"Unknown optimizer {cfg.optimizer!r}; use one of {', '.join(OPTIMIZERS)}.")


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig) -> CosineLRScheduler:
    return CosineLRScheduler(
        opt,
        t_initial=cfg.epochs,
        lr_min=cfg.min_lr,
        warmup_t=cfg.warmup_epochs,
        warmup_lr_init=1e-6,
        warmup_prefix=False,
        t_in_epochs=True,
    )


def lr_schedule(cfg: TrainConfig, base_lr: float | None = None) -> list[float]:
    """The lr of every epoch under ``cfg`` (for tests and logs)."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr if base_lr is not None else cfg.effective_lr)
    sched = build_scheduler(opt, cfg)
    out = []
    for e in range(cfg.epochs):
        _step_schedule(sched, e, cfg.schedule_shift)
        out.append(opt.param_groups[0]["lr"])
    return out


def _step_schedule(sched: CosineLRScheduler, epoch: int, shift: int) -> None:
    t = epoch + shift
    if t >= 0:
        sched.step(t)


def seed_everything(seed: int) -> None:
    """Seed every generator augmentations and initialisations draw from (python, numpy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _batch_len(batch: Any) -> int:
    """The number of samples in a batch (its first tensor's length)."""
    while isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    return len(batch) if torch.is_tensor(batch) else 0


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    resumed_from: int | None = None
    seconds: float = 0.0
    effective_lr: float | None = None
    effective_batch_size: int | None = None
    selected_best: bool = False
    amp: str = "off"  # the mixed precision the loop ran with: bf16, fp16 or off (always off on a CPU)
    devices: int = 1  # data-parallel workers (train.devices)
    accumulate: int = 1  # micro-batches per step (train.accumulate)
    batchnorm: str | None = None  # batchnorm_note of the trained module ("" where it has none in train mode)

    @property
    def info(self) -> dict[str, Any]:
        """What a training stage records in its ``stage.json``: the per-epoch history, the training
        time, the effective lr and batch size (after linear scaling), the best epoch when the
        recipe selects one on val, and the epoch it resumed from after a crash."""
        out: dict[str, Any] = {"history": self.history, "train_seconds": round(self.seconds, 3),
                               "effective_lr": self.effective_lr, "effective_batch_size": self.effective_batch_size,
                               "amp": self.amp}
        if self.selected_best:
            out.update(best_epoch=self.best_epoch, best_val_acc=self.best_score)
        if self.resumed_from is not None:  # a retry after a crash: epochs before this one were not rerun
            out["resumed_after_epoch"] = self.resumed_from
        if self.devices > 1 or self.accumulate > 1:
            b = self.effective_batch_size or 0
            out.update(devices=self.devices, per_device_batch=b // self.devices, accumulate=self.accumulate,
                       micro_batch=b // (self.devices * self.accumulate))
        if self.batchnorm:
            out["batchnorm"] = self.batchnorm
        return out


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _safe_load(path: Path) -> Any:
    """A checkpoint of ours: tensors and plain values only; a pickle of anything else is refused."""
    return torch.load(path, map_location="cpu", weights_only=True)


_RESUME_KEYS = ("module", "optimizer", "rng", "py_rng", "epoch", "history")


def _read_resume(ckpt_dir: Path, select_best: bool) -> dict[str, Any]:
    """The resume state in ``ckpt_dir`` (``last.pt``, and ``best.pt`` when the recipe selects the
    best epoch); raises on anything that is not one of our checkpoints."""
    state = _safe_load(ckpt_dir / "last.pt")
    if not isinstance(state, dict) or any(k not in state for k in _RESUME_KEYS):
        raise ValueError("not a training checkpoint of ltrbench (keys missing)")
    if select_best and state.get("best_epoch") is not None:
        best = _safe_load(ckpt_dir / "best.pt")  # a resumed run loads it at the end: it must load now
        if not isinstance(best, dict):
            raise ValueError("best.pt is not a state dict")
        state["best_module"] = best
    return state


def _discard(ckpt_dir: Path, desc: str, error: BaseException) -> None:
    log.warning("%s: the resume checkpoint in %s cannot be used (%s: %s); it is discarded and the "
                "training restarts from epoch 1.", desc, ckpt_dir, type(error).__name__, str(error).splitlines()[0][:300])
    for name in ("last.pt", "best.pt", "last.pt.tmp", "best.pt.tmp"):
        (ckpt_dir / name).unlink(missing_ok=True)


def fit(
    task: TrainTask,
    loader: DataLoader,
    cfg: TrainConfig,
    ckpt_dir: Path,
    *,
    device: torch.device,
    seed: int,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[int, Mapping[str, float | None]], None] | None = None,
) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` epochs, resuming from ``ckpt_dir/last.pt`` if present.

    At the end the task's module holds the last epoch's weights, or the best epoch's when
    ``cfg.select_best`` (the epoch with the best ``task.validate()``). ``on_epoch(epoch, row)`` is
    called after each epoch's checkpoint with the 0-based epoch and its history row (``epoch``
    1-based, ``loss``, ``lr``, and ``val_acc`` where the recipe validates): the stages' TensorBoard
    events (:func:`ltrbench.stages.train_in`).

    In a data-parallel group (``cfg.devices`` workers, :mod:`ltrbench.parallel`) every worker
    runs this same loop on its slice of each global batch (:func:`ltrbench.data.sharding.shard_loader`)
    with the module under DistributedDataParallel; rank 0 alone reads and writes the checkpoint
    files and broadcasts the state it resumed from, and the history rows hold the global batch's
    losses. ``cfg.accumulate`` splits each (per-device) batch into micro-batches, each loss weighted
    by its share of the batch, with one optimizer step per batch.
    """
    ckpt_dir = Path(ckpt_dir)
    me = shard()
    _check_parallel(task, cfg, me, desc)
    lead = me.rank == 0  # the worker that owns the checkpoint files (every worker outside a group)
    if lead:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    # Autocast is CUDA-only here: CPU bf16 autocast is slow and changes results on a laptop.
    amp = cfg.amp_mode if device.type == "cuda" else "off"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    last = ckpt_dir / "last.pt"
    resume = None
    if lead and last.is_file():
        try:
            resume = _read_resume(ckpt_dir, cfg.select_best)
        except Exception as e:  # torch.load's errors are many (UnpicklingError, RuntimeError, EOFError ...)
            _discard(ckpt_dir, desc, e)
    initial = copy.deepcopy(task.module.state_dict()) if resume is not None else None
    for attempt in ("resume", "fresh") if resume is not None else ("fresh",):
        seed_everything(seed)
        opt = build_optimizer(task, cfg)
        sched = build_scheduler(opt, cfg)
        # fp16 needs loss scaling against gradient underflow (the official NativeScaler); bf16 has
        # fp32's exponent range and needs none. A disabled scaler is a pass-through.
        scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
        result = FitResult(effective_lr=cfg.effective_lr, effective_batch_size=cfg.batch_size,
                           selected_best=cfg.select_best, amp=amp, devices=cfg.devices, accumulate=cfg.accumulate)
        start = 0
        if attempt == "fresh":
            resume = None
            if lead:
                (ckpt_dir / "best.pt").unlink(missing_ok=True)  # a fresh run has no best epoch yet: not ours
            break
        try:
            start = _apply_resume(resume, task, opt, scaler, result)
            log.info("%s: resuming after epoch %d from %s", desc, resume["epoch"], last)
            break
        except Exception as e:  # a checkpoint of another model or recipe: start afresh, as a new run would
            task.module.load_state_dict(initial)
            _discard(ckpt_dir, desc, e)
    if me.parallel:  # the other workers start from the state rank 0 resumed from (None: afresh)
        resume = broadcast(resume, device if device.type == "cuda" else None)
        if not lead and resume is not None:
            start = _apply_resume(resume, task, opt, scaler, result)
    del resume, initial
    if me.parallel:
        loader = shard_loader(loader, me.rank, me.world)
    step = _Step(task, me, device)  # the module under DistributedDataParallel in a group
    t0 = time.time()
    sampler = loader.sampler
    for epoch in range(start, cfg.epochs):
        _step_schedule(sched, epoch, cfg.schedule_shift)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(task, "set_epoch"):  # optional: a task whose loss changes with the epoch (LDAM-DRW)
            task.set_epoch(epoch)
        task.set_mode()
        if result.batchnorm is None:
            result.batchnorm = batchnorm_note(task.module, cfg)
        losses: list[float] = []
        seen = 0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for batch in bar:
            if me.parallel:
                fault_point(epoch + 1, len(losses) + 1)  # the drills' worker death (LTRBENCH_KILL_WORKER)
            batch = _to(batch, device)
            parts = _micro_batches(batch, cfg.accumulate)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for i, (part, weight) in enumerate(parts):
                with step.sync(i == len(parts) - 1):
                    with torch.autocast(device_type=device.type, dtype=dtype or torch.bfloat16,
                                        enabled=dtype is not None):
                        loss = step(part)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"{desc}: loss became {loss.item()} in epoch {epoch + 1}; lower the lr.")
                    scaler.scale(loss if len(parts) == 1 else loss * weight).backward()
                step_loss += float(loss.detach()) * weight
            scaler.step(opt)  # skips the step when fp16 gradients overflowed
            scaler.update()
            losses.append(step_loss)
            seen += _batch_len(batch)
            if progress and len(losses) % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
        if me.parallel:  # the global batch's loss: the mean of the workers' (equal) slices' losses
            sums = all_sum([*losses, float(seen)], device)
            losses, seen = [v / me.world for v in sums[:-1]], int(sums[-1])
        row = {"epoch": epoch + 1, "loss": sum(losses) / max(len(losses), 1),
               "lr": max(g["lr"] for g in opt.param_groups), "samples": seen}
        if os.environ.get(STEP_LOSSES_ENV):
            row["step_losses"] = losses
        if cfg.select_best and lead:
            score = task.validate()
            row["val_acc"] = score
            if score is not None and (result.best_score is None or score > result.best_score):
                result.best_epoch, result.best_score = epoch + 1, score
                _atomic_save(task.module.state_dict(), ckpt_dir / "best.pt")
        result.history.append(row)
        log.info("%s epoch %d/%d: %s", desc, epoch + 1, cfg.epochs,
                 {k: v for k, v in row.items() if k != "step_losses"})
        if lead:
            _atomic_save(
                {
                    "module": task.module.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                    "rng": torch.get_rng_state(),
                    "py_rng": random.getstate(),  # timm/torchvision augmentations draw from `random`
                    "epoch": epoch,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                },
                last,
            )
        if on_epoch is not None:
            on_epoch(epoch, row)
    if cfg.select_best and lead and (ckpt_dir / "best.pt").is_file():
        try:
            best = _safe_load(ckpt_dir / "best.pt")
        except Exception as e:
            raise LtrBenchError(f"{desc}: the best-epoch checkpoint {ckpt_dir / 'best.pt'} cannot be read ({e}); "
                                "it was written during this run, so the folder was changed meanwhile. Delete "
                                f"{ckpt_dir} and run again.") from None
        task.module.load_state_dict(best)
    result.seconds = time.time() - t0
    return result


def _apply_resume(state: Mapping[str, Any], task: TrainTask, opt: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, result: FitResult) -> int:
    """Put a resume checkpoint's state into the task, optimiser, scaler, generators and result;
    returns the first epoch to run."""
    task.module.load_state_dict(state["module"])
    opt.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    random.setstate(state["py_rng"])
    result.history = list(state["history"])
    result.best_epoch, result.best_score = state.get("best_epoch"), state.get("best_score")
    result.resumed_from = int(state["epoch"]) + 1
    return result.resumed_from


def _check_parallel(task: TrainTask, cfg: TrainConfig, me: Shard, desc: str) -> None:
    """Before any step: the group is the one ``cfg.devices`` asks for, and accumulation is not
    asked of a loss that needs the whole batch."""
    if cfg.devices != me.world:
        if me.world == 1:
            raise LtrBenchError(f"{desc}: train.devices={cfg.devices} trains data-parallel on {cfg.devices} workers, "
                                "which only the Ray executor starts: pass --executor ray (or --ray-address), or set "
                                "train.devices=1.")
        raise LtrBenchError(f"{desc}: train.devices={cfg.devices}, but this process is one of {me.world} workers.")
    if cfg.accumulate > 1 and getattr(task, "whole_batch", False):
        raise ConfigError(f"{desc}: train.accumulate={cfg.accumulate}, but this loss needs the whole batch at once "
                          "(it contrasts every image with every other): micro-batches would change it. Set "
                          "train.accumulate=1 and spread the batch over train.devices instead.")


class _LossOf(nn.Module):
    """``task.loss(batch)`` as a module's forward, with the task's module as its submodule: what
    DistributedDataParallel wraps, so that it sees the parameters however the loss calls the module
    (CVLP calls ``encode_image`` and ``encode_text``, not ``forward``)."""

    def __init__(self, task: TrainTask) -> None:
        super().__init__()
        self.inner = task.module
        self.task = task

    def forward(self, batch: Any) -> torch.Tensor:
        return self.task.loss(batch)


class _Step:
    """One forward pass to the loss: the task's own outside a group, through DistributedDataParallel
    (gradients averaged over the workers in backward) in one."""

    def __init__(self, task: TrainTask, me: Shard, device: torch.device) -> None:
        self.task = task
        self.ddp = None
        if me.parallel:
            from torch.nn.parallel import DistributedDataParallel  # here: only data-parallel workers need it

            ids = [torch.cuda.current_device()] if device.type == "cuda" else None
            self.ddp = DistributedDataParallel(_LossOf(task), device_ids=ids)

    def __call__(self, batch: Any) -> torch.Tensor:
        return self.task.loss(batch) if self.ddp is None else self.ddp(batch)

    def sync(self, last: bool):
        """Gradients are all-reduced on the last micro-batch of a step only (DDP's ``no_sync``)."""
        return contextlib.nullcontext() if self.ddp is None or last else self.ddp.no_sync()


def _micro_batches(batch: Any, k: int) -> list[tuple[Any, float]]:
    """``batch`` as ``k`` micro-batches along the first dimension, each with its share of the batch
    (a mean loss weighted so is the batch's mean loss); ``[(batch, 1.0)]`` for k = 1."""
    if k <= 1:
        return [(batch, 1.0)]
    n = _batch_len(batch)
    parts = [_take(batch, i, k) for i in range(k)]
    return [(p, _batch_len(p) / n) for p in parts if _batch_len(p)]


def _take(batch: Any, i: int, k: int) -> Any:
    if torch.is_tensor(batch):
        return torch.tensor_split(batch, k)[i]
    if isinstance(batch, (list, tuple)):
        return type(batch)(_take(b, i, k) for b in batch)
    if isinstance(batch, dict):
        return {key: _take(v, i, k) for key, v in batch.items()}
    return batch


def batchnorm_note(module: nn.Module, cfg: TrainConfig) -> str:
    """What a stage records about BatchNorm layers that normalise over the training batch ("" where
    none does): their statistics are per device and micro-batch, over ``cfg.micro_batch`` images,
    as the official multi-GPU runs' are per GPU (:data:`OFFICIAL_DEVICES` GPUs)."""
    layers = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in module.modules())
    if not layers:
        return ""
    official = cfg.batch_size // OFFICIAL_DEVICES
    return (f"{layers} BatchNorm layers normalise over each device's micro-batch: {cfg.micro_batch} images "
            f"(train.batch_size {cfg.batch_size} / devices {cfg.devices} / accumulate {cfg.accumulate}); the official "
            f"recipes' {OFFICIAL_DEVICES} GPUs normalise over {official} each"
            + ("" if cfg.micro_batch == official else
               f", so these statistics are over {cfg.micro_batch / max(official, 1):g}x as many images"))
