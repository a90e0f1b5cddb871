"""Stages: content-keyed, cached units of work, and the plan (a de-duplicated DAG of them).

A stage is a pure function of its config and its inputs (ARCHITECTURE.md "Stages"):
``key = hash(kind, config, input keys, kind version)``. Its artifact lives at
``<cache>/<kind>/<key>/``; it is built in ``<cache>/<kind>/<key>.partial/`` (where training
stages keep their per-epoch checkpoint, so a crash resumes) and renamed into place when complete,
with ``stage.json`` written last. A finished key is never recomputed, and equal stages of
different runs are one node of the DAG. A file lock per key (``<key>.lock``) keeps two processes
sharing a cache from building the same stage at once.

``env`` carries what may differ between machines without changing the result (a data root, the
number of loader workers): it is passed to the stage function but not hashed; neither are ``label``
and ``roles`` (names for the inputs, so a stage reads ``ctx.role("train")``, never a position).

Stage functions are registered by kind in :data:`ltrbench.registry.STAGES` and receive only a
:class:`StageContext`, so they run the same inline or in a Ray worker. A training stage trains with
:meth:`StageContext.train` (heads on cached features with :func:`ltrbench.head_fit.train_head`;
both go through :func:`train_in`): its resume checkpoints live in ``ctx.work``, a scratch folder
inside the ``.partial`` folder that the engine deletes once the stage function has returned, and
its TensorBoard events (loss, learning rate and, where the recipe validates, val accuracy per
epoch) in ``tb/<label>/`` of the artifact, so ``tensorboard --logdir <cache>`` shows every
training stage. Every stage also leaves ``log.txt``: the library's log lines while it was built
(INFO and above, per-epoch rows included), whatever the console shows.

The stage key seeds the stage's random generators (:func:`run_stage`): a result depends on the
stage's content only, never on what ran before it in the process.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: stages are built without a lock
    fcntl = None  # type: ignore[assignment]

from .registry import STAGES
from .train import FitResult, TrainTask, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind: the function, its code version and the resources it asks for."""

    name: str
    fn: Callable[["StageContext"], Mapping[str, Any] | None]
    version: str = "1"
    gpus: float = 0.0  # fraction of a GPU asked of the scheduler when GPUs exist


def stage_kind(name: str, version: str = "1", gpus: float = 0.0):
    """Decorator registering ``fn(ctx) -> info`` as the stage kind ``name``.

    Bump ``version`` when the code's output changes, so cached artifacts are not reused.
    """

    def deco(fn):
        STAGES.add(name, StageKind(name, fn, version, gpus))
        return fn

    return deco


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, eq=False)
class Stage:
    """One node of the DAG. ``config`` and ``inputs`` define the key; ``env`` does not."""

    kind: str
    config: Mapping[str, Any]
    inputs: tuple["Stage", ...] = ()
    env: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    roles: tuple[str, ...] = ()  # a name per input (same order), for StageContext.role

    @cached_property
    def key(self) -> str:
        version = STAGES.get(self.kind).version
        payload = _canonical([self.kind, version, self.config, [s.key for s in self.inputs]])
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage) and other.key == self.key

    def describe(self) -> str:
        return f"{self.kind}[{self.label or self.key[:8]}]"


@dataclass
class StageContext:
    """What a stage function sees: its stage, where to write, its inputs' finished artifacts."""

    stage: Stage
    out: Path  # the .partial folder to write into
    cache: Path
    inputs: list[Path]
    progress: bool = True

    @property
    def config(self) -> Mapping[str, Any]:
        return self.stage.config

    @property
    def env(self) -> Mapping[str, Any]:
        return self.stage.env

    @property
    def work(self) -> Path:
        """Scratch space (resume checkpoints): deleted by the engine when the stage has finished."""
        return self.out / "work"

    def input(self, kind: str, index: int = 0) -> Path:
        """The artifact folder of the ``index``-th input of ``kind``."""
        found = [p for s, p in zip(self.stage.inputs, self.inputs) if s.kind == kind]
        if len(found) <= index:
            raise KeyError(f"stage {self.stage.describe()} has no input #{index} of kind {kind!r}")
        return found[index]

    def role(self, name: str) -> Path:
        """The artifact folder of the input the planner named ``name`` (``Stage.roles``)."""
        if name not in self.stage.roles:
            raise KeyError(f"stage {self.stage.describe()} has no input named {name!r}; it has {self.stage.roles}")
        return self.inputs[self.stage.roles.index(name)]

    def has_role(self, name: str) -> bool:
        return name in self.stage.roles

    def train(self, task: TrainTask, loader, cfg, *, device, seed: int, desc: str | None = None) -> FitResult:
        """The one way a stage trains: :func:`train_in` its artifact folder (the per-epoch
        checkpoint in ``work/ckpt``, from which a rerun after a crash resumes; TensorBoard events in
        ``tb/``). ``FitResult.info`` is what every training stage records (history, time, effective
        lr and batch size, best epoch)."""
        name = desc or self.stage.label or self.stage.kind
        return train_in(task, loader, cfg, self.out, device=device, seed=seed, progress=self.progress, desc=name)


def train_in(task: TrainTask, loader, cfg, folder: Path, *, device, seed: int, progress: bool = True,
             desc: str = "train", run_name: str | None = None) -> FitResult:
    """:func:`ltrbench.train.fit` into ``folder`` (a stage's artifact under construction): resume
    checkpoints in ``folder/work/ckpt`` and one TensorBoard scalar per history value and epoch
    (``train/loss``, ``train/lr``, ``val/acc``) in ``folder/tb/<run_name or desc>/``.

    The events only record: writing them draws no random number and changes no stage key.
    """
    with EpochEvents(folder / "tb" / _safe_name(run_name or desc)) as events:
        return fit(task, loader, cfg, Path(folder) / "work" / "ckpt", device=device, seed=seed, progress=progress,
                   desc=desc, on_epoch=events.epoch)


def _safe_name(name: str) -> str:
    """A label as one folder name (TensorBoard shows it as the run's name)."""
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name) or "train"


class EpochEvents:
    """TensorBoard scalars of a training run's history rows, one step per epoch (1-based)."""

    TAGS = {"loss": "train/loss", "lr": "train/lr", "val_acc": "val/acc"}

    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        self._writer = None

    def __enter__(self) -> "EpochEvents":
        from tensorboardX import SummaryWriter  # ~0.4 s to import: only stages that train need it

        self.logdir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(str(self.logdir), flush_secs=30)
        return self

    def epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        for key, tag in self.TAGS.items():
            if row.get(key) is not None:
                self._writer.add_scalar(tag, float(row[key]), int(row.get("epoch", epoch + 1)))

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


def artifact_dir(cache: Path, stage: Stage) -> Path:
    return Path(cache) / stage.kind / stage.key


def is_done(cache: Path, stage: Stage) -> bool:
    return (artifact_dir(cache, stage) / "stage.json").is_file()


def read_info(cache: Path, stage: Stage) -> dict[str, Any]:
    return json.loads((artifact_dir(cache, stage) / "stage.json").read_text())


def topological(targets: Iterable[Stage]) -> list[Stage]:
    """All stages needed by ``targets``, each key once, inputs before the stages that use them."""
    order: list[Stage] = []
    seen: set[str] = set()

    def visit(s: Stage) -> None:
        if s.key in seen:
            return
        for i in s.inputs:
            visit(i)
        seen.add(s.key)
        order.append(s)

    for t in targets:
        visit(t)
    return order


def run_stage(stage: Stage, cache: str | os.PathLike, progress: bool = True) -> dict[str, Any]:
    """Build one stage's artifact unless it exists; return its ``stage.json`` info.

    A plain function of picklable arguments: the inline executor calls it directly and the Ray
    executor calls it inside a task (the stage registry loads the plugins, whose kinds it needs).
    """
    cache = Path(cache)
    final = artifact_dir(cache, stage)
    if (final / "stage.json").is_file():
        return json.loads((final / "stage.json").read_text())
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final.with_name(final.name + ".lock"), stage):
        if (final / "stage.json").is_file():  # another process built it while we waited
            return json.loads((final / "stage.json").read_text())
        return _build(stage, cache, final, progress)


@contextlib.contextmanager
def _build_lock(path: Path, stage: Stage):
    """One builder per stage key: two processes sharing a cache (two runs, Ray workers on one
    machine) would otherwise train into the same ``.partial`` folder. The second waits, then finds
    the artifact done. ``flock`` is advisory and per machine; on network storage it holds where the
    file system supports it (NFSv4, Lustre), and the final rename keeps one result either way."""
    if fcntl is None:
        yield
        return
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("stage %s: another process is building it; waiting", stage.describe())
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError as e:  # a file system without locks (some network mounts): build unlocked
            log.warning("stage %s: cannot lock %s (%s); building without a lock", stage.describe(), path, e)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


LIBRARY_LOGGER = "ltrbench"  # the library's loggers (plugins' too: ltrbench.methods.*) live under it


class _Propagate(logging.Handler):
    """Pass a record on to the ancestors' handlers as :meth:`logging.Logger.callHandlers` would,
    but only at or above ``threshold``: what the console showed before :func:`stage_log`."""

    def __init__(self, start: logging.Logger | None, threshold: int) -> None:
        super().__init__()
        self.start, self.threshold = start, threshold

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.threshold:
            return
        found, c = 0, self.start
        while c is not None:
            for h in c.handlers:
                found += 1
                if record.levelno >= h.level:
                    h.handle(record)
            c = c.parent if c.propagate else None
        if not found and logging.lastResort is not None and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


@contextlib.contextmanager
def stage_log(path: Path):
    """Write the library's log lines (INFO and above) into ``path`` while the block runs.

    The library logs at INFO (stage starts, per-epoch rows, what a head chose), which the CLI's
    console does not show. The library logger is opened to INFO for the block and stops
    propagating; records reach the file, and those the console would have shown before (at the
    old threshold) reach the old handlers through :class:`_Propagate`.
    """
    lib = logging.getLogger(LIBRARY_LOGGER)
    level, propagate, threshold = lib.level, lib.propagate, lib.getEffectiveLevel()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    onward = _Propagate(lib.parent if propagate else None, threshold)
    lib.addHandler(to_file)
    lib.addHandler(onward)
    lib.setLevel(min(threshold, logging.INFO))
    lib.propagate = False
    try:
        yield
    finally:
        lib.removeHandler(to_file)
        lib.removeHandler(onward)
        lib.setLevel(level)
        lib.propagate = propagate
        to_file.close()


def _build(stage: Stage, cache: Path, final: Path, progress: bool) -> dict[str, Any]:
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    inputs = [artifact_dir(cache, s) for s in stage.inputs]
    for s, p in zip(stage.inputs, inputs):
        if not (p / "stage.json").is_file():
            raise RuntimeError(f"stage {stage.describe()} started before its input {s.describe()} finished")
    kind = STAGES.get(stage.kind)
    with stage_log(partial / "log.txt"):
        log.info("stage %s: computing (key %s)", stage.describe(), stage.key)
        # Every stage starts from generators seeded by its own key, so its result never depends on
        # what ran before it in the same process (e.g. a head's initialisation after mini-CLIP).
        seed_everything(int(stage.key[:8], 16))
        t0 = time.time()
        ctx = StageContext(stage, partial, cache, inputs, progress)
        extra = kind.fn(ctx) or {}
        log.info("stage %s: done in %.1f s", stage.describe(), time.time() - t0)
    shutil.rmtree(ctx.work, ignore_errors=True)  # resume checkpoints: only needed until done
    info = {
        "kind": stage.kind,
        "key": stage.key,
        "label": stage.label,
        "version": kind.version,
        "config": stage.config,
        "inputs": [s.key for s in stage.inputs],
        "elapsed_s": round(time.time() - t0, 3),
        "host": socket.gethostname(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **dict(extra),
    }
    tmp = partial / "stage.json.tmp"
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
    os.replace(tmp, partial / "stage.json")
    try:
        os.replace(partial, final)
    except OSError:
        # Another worker finished the same key first (shared storage): keep theirs.
        if not (final / "stage.json").is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return json.loads((final / "stage.json").read_text())
