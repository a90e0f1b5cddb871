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
:meth:`StageContext.train`: its resume checkpoints live in ``ctx.work``, a scratch folder inside
the ``.partial`` folder that the engine deletes once the stage function has returned.

The stage key seeds the stage's random generators (:func:`run_stage`): a result depends on the
stage's content only, never on what ran before it in the process.

``stage.json`` also records where and when the stage ran, from the view of the process that ran it:
``host``, ``device`` (:mod:`ltrbench.devices`), ``started`` and ``finished`` (unix seconds), ``pid``,
the process's peak memory, and what the executor passes (``attempt``, a Ray ``node``, the task's
``resources``). None of it is part of the key.

Fault injection for tests and drills: ``LTRBENCH_FAIL_STAGE=<kind>[:<n>][,...]`` makes every stage
of that kind fail its first n attempts (every attempt without n), counted across processes in
``<cache>/.faults/<key>.count`` (:func:`inject_fault`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

try:
    import fcntl
    import resource
except ImportError:  # pragma: no cover - not POSIX: stages are built without a lock
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

from .devices import describe, stage_device
from .errors import LtrBenchError
from .registry import STAGES
from .train import FitResult, TrainTask, fit, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind: the function, its code version and the resources it asks for.

    ``gpus`` is the share of a GPU the kind asks of a scheduler where GPUs are used: a number, or a
    function of the stage's config (a kind whose work depends on its config, e.g. ``clip_weights``
    trains only for a generated weights source). ``memory_gb`` is a rough estimate of the host memory
    of one stage of the kind on the real data sets, loader workers aside (the executor adds those).
    ``loader``: whether the kind reads images through a DataLoader (and so uses ``data.num_workers``
    worker processes besides its own), again a bool or a function of the config. None of it is part
    of a stage's key.
    """

    name: str
    fn: Callable[["StageContext"], Mapping[str, Any] | None]
    version: str = "1"
    gpus: float | Callable[[Mapping[str, Any]], float] = 0.0
    memory_gb: float = 2.0
    loader: bool | Callable[[Mapping[str, Any]], bool] = False

    def gpus_for(self, config: Mapping[str, Any]) -> float:
        """The GPU share a stage of this kind with ``config`` asks for where GPUs are used."""
        return float(self.gpus(config) if callable(self.gpus) else self.gpus)

    def uses_loader(self, config: Mapping[str, Any]) -> bool:
        """Whether a stage of this kind with ``config`` runs DataLoader worker processes."""
        return bool(self.loader(config) if callable(self.loader) else self.loader)


def stage_kind(name: str, version: str = "1", gpus: float | Callable[[Mapping[str, Any]], float] = 0.0,
               memory_gb: float = 2.0, loader: bool | Callable[[Mapping[str, Any]], bool] = False):
    """Decorator registering ``fn(ctx) -> info`` as the stage kind ``name``.

    Bump ``version`` when the code's output changes, so cached artifacts are not reused. ``gpus``,
    ``memory_gb`` and ``loader``: what the kind asks of a scheduler (:class:`StageKind`).
    """

    def deco(fn):
        STAGES.add(name, StageKind(name, fn, version, gpus, memory_gb, loader))
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
        """The one way a stage trains: :func:`ltrbench.train.fit` with its per-epoch checkpoint in
        ``work/ckpt`` (a rerun after a crash resumes from it). ``FitResult.info`` is what every
        training stage records (history, time, effective lr and batch size, best epoch)."""
        return fit(task, loader, cfg, self.work / "ckpt", device=device, seed=seed, progress=self.progress,
                   desc=desc or self.stage.label or self.stage.kind)


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


def run_stage(stage: Stage, cache: str | os.PathLike, progress: bool = True,
              record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build one stage's artifact unless it exists; return its ``stage.json`` info.

    A plain function of picklable arguments: the inline executor calls it directly and the Ray
    executor calls it inside a task (the stage registry loads the plugins, whose kinds it needs).
    ``record``: what the caller knows about where the stage runs (a Ray node id, the attempt),
    written into ``stage.json`` beside what the engine records itself.
    """
    cache = Path(cache)
    final = artifact_dir(cache, stage)
    if (final / "stage.json").is_file():
        return json.loads((final / "stage.json").read_text())
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final.with_name(final.name + ".lock"), stage):
        if (final / "stage.json").is_file():  # another process built it while we waited
            return json.loads((final / "stage.json").read_text())
        return _build(stage, cache, final, progress, dict(record or {}))


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


def _build(stage: Stage, cache: Path, final: Path, progress: bool, record: dict[str, Any]) -> dict[str, Any]:
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    inputs = [artifact_dir(cache, s) for s in stage.inputs]
    for s, p in zip(stage.inputs, inputs):
        if not (p / "stage.json").is_file():
            raise RuntimeError(f"stage {stage.describe()} started before its input {s.describe()} finished")
    kind = STAGES.get(stage.kind)
    dev = stage_device()  # before any work: --device cuda on a host without CUDA fails here
    log.info("stage %s: computing (key %s) on %s", stage.describe(), stage.key, dev)
    # Every stage starts from generators seeded by its own key, so its result never depends on
    # what ran before it in the same process (e.g. a head's initialisation after mini-CLIP).
    seed_everything(int(stage.key[:8], 16))
    t0 = time.time()
    ctx = StageContext(stage, partial, cache, inputs, progress)
    extra = kind.fn(ctx) or {}
    inject_fault(stage, cache)  # the drill's failure: after the work, before the artifact is committed
    shutil.rmtree(ctx.work, ignore_errors=True)  # resume checkpoints: only needed until done
    t1 = time.time()
    info = {
        "kind": stage.kind,
        "key": stage.key,
        "label": stage.label,
        "version": kind.version,
        "config": stage.config,
        "inputs": [s.key for s in stage.inputs],
        "elapsed_s": round(t1 - t0, 3),
        # Where and when it ran (unix seconds): the worker's view, for progress, placement and overlap.
        "host": socket.gethostname(),
        "device": describe(dev),
        "started": round(t0, 3),
        "finished": round(t1, 3),
        "pid": os.getpid(),
        "process_peak_rss_mb": _peak_rss_mb(),
        **record,
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


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (a reused worker's includes its earlier stages)."""
    if resource is None:  # pragma: no cover - not POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- fault injection

#: ``<kind>[:<n>][,<kind>[:<n>]...]``: every stage of that kind fails its first n attempts (always without n).
FAULT_ENV = "LTRBENCH_FAIL_STAGE"


class InjectedFault(RuntimeError):
    """The failure raised by the fault-injection switch :data:`FAULT_ENV` (tests and drills)."""


def fault_plan(spec: str | None = None) -> dict[str, int | None]:
    """``{kind: n}`` of :data:`FAULT_ENV` (``None``: every attempt fails)."""
    spec = os.environ.get(FAULT_ENV, "") if spec is None else spec
    plan: dict[str, int | None] = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        kind, _, n = item.partition(":")
        try:
            plan[kind.strip()] = int(n) if n.strip() else None
        except ValueError:
            raise LtrBenchError(f"{FAULT_ENV}={spec!r}: {item!r} is not <kind>[:<n>] with an integer n, "
                                f"e.g. {FAULT_ENV}=finetune:1 (each finetune stage fails its first attempt).") from None
    return plan


def inject_fault(stage: Stage, cache: Path) -> None:
    """Raise :class:`InjectedFault` if :data:`FAULT_ENV` says this attempt of ``stage`` fails.

    The attempts of each stage are counted in ``<cache>/.faults/<key>.count`` under a lock, so the
    count holds across processes (Ray workers, retries, a rerun). The switch fires after the stage
    function has returned and before the artifact is committed, as a crash at the worst moment would:
    a training stage's retry then resumes from its last checkpoint.
    """
    plan = fault_plan()
    if stage.kind not in plan:
        return
    limit = plan[stage.kind]
    counter = Path(cache) / ".faults" / f"{stage.key}.count"
    counter.parent.mkdir(parents=True, exist_ok=True)
    with open(counter, "a+") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        count = int(fh.read().strip() or 0) + 1
        fh.seek(0)
        fh.truncate()
        fh.write(str(count))
    if limit is None or count <= limit:
        raise InjectedFault(f"{FAULT_ENV}={os.environ[FAULT_ENV]}: injected failure of stage {stage.describe()} "
                            f"(key {stage.key}), attempt {count}" + ("" if limit is None else f" of the first {limit}"))
