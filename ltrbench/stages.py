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

Integrity: ``stage.json`` holds a manifest of every other file of the artifact (size and SHA-256,
``"files"``) and a hash of its own content (``"stage_sha256"``). A stage is done only when its
manifest verifies: sizes on every check, full hashes the first time a process uses the stage
(:func:`verify`). A stage that fails (a flipped byte, a truncated file, a folder without
``stage.json``, or a ``stage.json`` written before manifests existed: unverifiable content is
never trusted) is reported in one warning naming its kind, key and folder, moved aside to
``<key>.corrupt-<time>`` and rebuilt; the run goes on. Hashing never changes a key. Nothing in
the cache is ever unpickled (:mod:`ltrbench.train`, :mod:`ltrbench.models` load tensors only), so
someone who can write a shared cache can change numbers, which the manifest catches when it is
accidental, but cannot run code. Nor can they make a run write or delete outside the cache: the lock
file, the attempts log, ``stage.json`` and the fault counters are opened through
:mod:`ltrbench.safeio` (never through a link at their name), and a link at a stage's folder, artifact,
``.partial`` folder, lock or log, or anywhere inside its ``.partial`` folder, is refused with one
paragraph naming it (:func:`check_stage_paths`; a ``stage.json`` that cannot be parsed at all, even
one nested too deep for the parser, is moved aside like any corrupt artifact).

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
from typing import Any, Callable, Iterable, Mapping, NamedTuple

try:
    import fcntl
    import resource
except ImportError:  # pragma: no cover - not POSIX: stages are built without a lock
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

from .data.images import recording_replacements
from .devices import describe, stage_device
from .errors import CacheError, LtrBenchError
from .fingerprints import sha256_file
from .registry import STAGES
from .safeio import links_inside, open_update, real_dir, refuse_link, write_atomic
from .train import FitResult, TrainTask, fit, seed_everything

log = logging.getLogger(__name__)

STAGE_JSON = "stage.json"
#: Seconds between the "still waiting" lines printed while another process holds a stage's lock.
HEARTBEAT_S = 30.0
_LOCK_POLL_S = 0.5
#: Artifact folders whose full hashes verified in this process: (folder, stage.json's content
#: hash). Sizes are still checked on every use; hashing everything again is what this saves.
_VERIFIED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Reads:
    """What a stage reads of its data set besides the split lists (which planning reads and checks):
    the images of ``splits``, and the text corpus of source ``corpus`` (``wiki_prompt`` reads the
    wiki files). :mod:`ltrbench.validate` checks exactly these before any stage runs."""

    splits: tuple[str, ...] = ()
    corpus: str | None = None


@dataclass(frozen=True)
class StageKind:
    """A registered stage kind: the function, its code version, the resources it asks for, and
    what it reads of its data set (``reads(config) -> Reads``; None: nothing but the lists).

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
    reads: Callable[[Mapping[str, Any]], Reads] | None = None

    def gpus_for(self, config: Mapping[str, Any]) -> float:
        """The GPU share a stage of this kind with ``config`` asks for where GPUs are used."""
        return float(self.gpus(config) if callable(self.gpus) else self.gpus)

    def uses_loader(self, config: Mapping[str, Any]) -> bool:
        """Whether a stage of this kind with ``config`` runs DataLoader worker processes."""
        return bool(self.loader(config) if callable(self.loader) else self.loader)


def stage_kind(name: str, version: str = "1", gpus: float | Callable[[Mapping[str, Any]], float] = 0.0,
               memory_gb: float = 2.0, loader: bool | Callable[[Mapping[str, Any]], bool] = False,
               reads: Callable[[Mapping[str, Any]], Reads] | None = None):
    """Decorator registering ``fn(ctx) -> info`` as the stage kind ``name``.

    Bump ``version`` when the code's output changes, so cached artifacts are not reused. ``gpus``,
    ``memory_gb`` and ``loader``: what the kind asks of a scheduler (:class:`StageKind`).
    """

    def deco(fn):
        STAGES.add(name, StageKind(name, fn, version, gpus, memory_gb, loader, reads))
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


def check_stage_paths(cache: Path, stage: Stage) -> None:
    """Raise :class:`~ltrbench.safeio.UnsafePathError` when a name the engine writes or renames for
    ``stage`` is a symbolic link (one planted in a shared cache): its folder ``<cache>/<kind>``, its
    artifact, its ``.partial`` folder, its lock file and its log (:mod:`ltrbench.safeio`)."""
    for what, p in stage_paths(cache, stage).items():
        refuse_link(p, f"{what} of stage {stage.describe()}")


def stage_paths(cache: Path, stage: Stage) -> dict[str, Path]:
    """The names the engine creates for ``stage`` in the cache, by what they are."""
    final = artifact_dir(cache, stage)
    return {"the kind's folder": final.parent, "the artifact folder": final,
            "the build folder": final.with_name(f"{stage.key}.partial"),
            "the lock file": final.with_name(f"{stage.key}.lock"), "the attempts log": final.with_name(f"{stage.key}.log")}


def is_done(cache: Path, stage: Stage) -> bool:
    """Whether the stage's artifact is complete as far as cheap checks tell (its ``stage.json``
    and manifest, and every file's size); no hashing, no side effect (``Plan.to_frame``)."""
    return check_artifact(cache, stage, full=False).problem is None


def verify(cache: Path, stage: Stage) -> bool:
    """Whether the stage's artifact is complete and verified: sizes always, SHA-256 of every file
    the first time this process uses it. No side effect: a failing stage is moved aside and rebuilt
    by :func:`run_stage`, under the stage's lock."""
    return check_artifact(cache, stage, full=True).problem is None


def read_info(cache: Path, stage: Stage) -> dict[str, Any]:
    return json.loads((artifact_dir(cache, stage) / STAGE_JSON).read_text())


def _info_hash(info: Mapping[str, Any]) -> str:
    """The hash of a stage.json's content (itself left out), over its JSON form (what is read back)."""
    return hashlib.sha256(_canonical({k: v for k, v in info.items() if k != "stage_sha256"}).encode()).hexdigest()


def file_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` but ``stage.json``."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel in (STAGE_JSON, STAGE_JSON + ".tmp") or not p.is_file():
            continue
        out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def _unsafe_rel(rel: str) -> bool:
    return rel.startswith("/") or ".." in Path(rel).parts


class ArtifactCheck(NamedTuple):
    """What :func:`check_artifact` found: ``problem`` is None when the artifact verifies; else it
    says what is wrong, and ``aside`` how a folder that is there is to be moved aside (``corrupt``,
    or ``unverified`` for one without a manifest); None when there is no folder."""

    problem: str | None
    aside: str | None = None


def check_artifact(cache: Path, stage: Stage, *, full: bool) -> ArtifactCheck:
    """Check a stage's artifact folder against its manifest. ``full``: hash every file unless this
    process verified this very artifact before (sizes are checked every time)."""
    final = artifact_dir(cache, stage)
    meta = final / STAGE_JSON
    if not meta.is_file():
        if final.exists():
            return ArtifactCheck("the folder has no stage.json (an interrupted or foreign write)", "corrupt")
        return ArtifactCheck("not built")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        return ArtifactCheck(f"its stage.json cannot be read ({e})", "corrupt")
    files = info.get("files") if isinstance(info, dict) else None
    if not isinstance(files, dict) or "stage_sha256" not in info:
        return ArtifactCheck("its stage.json has no manifest of its files (written by an older ltrbench), so its "
                             "content cannot be verified", "unverified")
    if info.get("key") != stage.key or info.get("kind") != stage.kind:
        return ArtifactCheck(f"its stage.json belongs to {info.get('kind')}/{info.get('key')}", "corrupt")
    for rel, want in files.items():
        if _unsafe_rel(rel) or not isinstance(want, dict):
            return ArtifactCheck(f"its manifest names {rel!r}, which is not a file of the folder", "corrupt")
        try:
            size = (final / rel).stat().st_size
        except OSError:
            return ArtifactCheck(f"{rel} is missing", "corrupt")
        if size != want.get("size"):
            return ArtifactCheck(f"{rel} has {size} bytes where its manifest says {want.get('size')}", "corrupt")
    token = (str(final), str(info["stage_sha256"]))
    if not full or token in _VERIFIED:
        return ArtifactCheck(None)
    if _info_hash(info) != info["stage_sha256"]:
        return ArtifactCheck("its stage.json does not match its own hash (it was changed)", "corrupt")
    for rel, want in files.items():
        if sha256_file(final / rel) != want.get("sha256"):
            return ArtifactCheck(f"{rel} does not match the SHA-256 in its manifest (its content changed)", "corrupt")
    _VERIFIED.add(token)
    return ArtifactCheck(None)


def _quarantine(final: Path, stage: Stage, found: ArtifactCheck) -> None:
    """Move a failing artifact folder aside (never delete what may be evidence) and say so once."""
    aside = final.with_name(f"{final.name}.{found.aside}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    try:
        os.replace(final, aside)
    except FileNotFoundError:  # another process moved it first
        return
    log.warning("stage %s (kind %s, key %s): %s. Moved %s aside to %s (delete it when no longer needed); "
                "rebuilding the stage.", stage.describe(), stage.kind, stage.key, found.problem, final, aside.name)


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
    """Build one stage's artifact unless a verified one exists; return its ``stage.json`` info.

    A plain function of picklable arguments: the inline executor calls it directly and the Ray
    executor calls it inside a task (the stage registry loads the plugins, whose kinds it needs).
    ``record``: what the caller knows about where the stage runs (a Ray node id, the attempt),
    written into ``stage.json`` beside what the engine records itself. An artifact that fails
    verification is moved aside and rebuilt (see the module docstring).
    """
    cache = Path(cache)
    final = artifact_dir(cache, stage)
    check_stage_paths(cache, stage)
    if verify(cache, stage):
        return read_info(cache, stage)
    real_dir(final.parent, cache, "the stage folder", create=True)
    with _build_lock(final.with_name(final.name + ".lock"), stage):
        found = check_artifact(cache, stage, full=True)
        if found.problem is None:  # another process built it while we waited
            return read_info(cache, stage)
        if found.aside:
            _quarantine(final, stage, found)
        return _build(stage, cache, final, progress, dict(record or {}))


def _say(msg: str) -> None:
    # Printed, not logged: a wait on another process is not a problem (no warning), but a user who
    # sees nothing happen must be told why, at any logging level, and in Ray workers' output too.
    print(msg, file=sys.stderr, flush=True)


def _holder(fh) -> str:
    fh.seek(0)
    parts = fh.read().split()
    if len(parts) >= 2:
        return f"pid {parts[0]} on {parts[1]}"
    return "another process (its pid is not written yet)"


@contextlib.contextmanager
def _build_lock(path: Path, stage: Stage):
    """One builder per stage key: two processes sharing a cache (two runs, Ray workers on one
    machine) would otherwise train into the same ``.partial`` folder. The second waits, saying at
    once which stage it waits for and which process holds it (the holder writes its pid and host
    into the lock file), then every :data:`HEARTBEAT_S` seconds; then it finds the artifact done.
    ``flock`` is advisory and per machine; on network storage it holds where the file system
    supports it (NFSv4, Lustre), and the final rename keeps one result either way. A lock file
    left by a dead process holds no lock (the kernel releases it with the process)."""
    if fcntl is None:
        yield
        return
    with open_update(path, f"the lock file of stage {stage.describe()}") as fh:
        try:
            _acquire(fh, stage)
        except OSError as e:  # a file system without locks (some network mounts): build unlocked
            log.warning("stage %s: cannot lock %s (%s); building without a lock", stage.describe(), path, e)
            yield
            return
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
            fh.flush()
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


def _acquire(fh, stage: Stage) -> None:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    holder = _holder(fh)
    _say(f"waiting for stage {stage.describe()} ({stage.kind} {stage.key}): {holder} is building it")
    t0 = time.monotonic()
    beat = t0 + HEARTBEAT_S
    while True:
        time.sleep(_LOCK_POLL_S)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            now = time.monotonic()
            if now >= beat:
                _say(f"still waiting for stage {stage.describe()} ({_holder(fh)}), {now - t0:.0f} s so far")
                beat = now + HEARTBEAT_S


def _clear_partial(partial: Path) -> None:
    """Keep only ``work/`` (resume checkpoints) of a ``.partial`` folder left by an earlier attempt:
    whatever else is there is a half-written artifact, never part of the new one."""
    for child in partial.iterdir():
        if child.name == "work":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _build(stage: Stage, cache: Path, final: Path, progress: bool, record: dict[str, Any]) -> dict[str, Any]:
    partial = final.with_name(final.name + ".partial")
    real_dir(partial, cache, f"the build folder of stage {stage.describe()}", create=True)
    links = links_inside(partial)
    if links:  # nothing below a build folder is a link ltrbench made: never write or delete through one
        refuse_link(links[0], f"a file in the build folder of stage {stage.describe()}")
    _clear_partial(partial)
    inputs = [artifact_dir(cache, s) for s in stage.inputs]
    for s in stage.inputs:
        problem = check_artifact(cache, s, full=True).problem
        if problem is not None:
            raise CacheError(f"stage {stage.describe()} cannot start: its input {s.describe()} "
                             f"({artifact_dir(cache, s)}) is not a verified artifact: {problem}. Run again: "
                             "the input is then checked and rebuilt first.")
    kind = STAGES.get(stage.kind)
    dev = stage_device()  # before any work: --device cuda on a host without CUDA fails here
    with stage_log(partial / "log.txt"):
        log.info("stage %s: computing (key %s) on %s", stage.describe(), stage.key, dev)
        # Every stage starts from generators seeded by its own key, so its result never depends on
        # what ran before it in the same process (e.g. a head's initialisation after mini-CLIP).
        seed_everything(int(stage.key[:8], 16))
        t0 = time.time()
        ctx = StageContext(stage, partial, cache, inputs, progress)
        with recording_replacements() as replaced:
            extra = kind.fn(ctx) or {}
        t1 = time.time()
        log.info("stage %s: done in %.1f s", stage.describe(), t1 - t0)
    inject_fault(stage, cache)  # the drill's failure: after the work, before the artifact is committed
    shutil.rmtree(ctx.work, ignore_errors=True)  # resume checkpoints: only needed until done
    t_hash = time.perf_counter()
    files = file_manifest(partial)
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
        **({"replaced_images": [replaced[p] for p in sorted(replaced)]} if replaced else {}),
        "files": files,
        "manifest_s": round(time.perf_counter() - t_hash, 4),  # hashing time (bench/integrity.py)
    }
    info = json.loads(json.dumps(info, default=str))  # exactly what is read back, hashed below
    info["stage_sha256"] = _info_hash(info)
    write_atomic(partial / STAGE_JSON, json.dumps(info, indent=1, sort_keys=True), "the stage.json of a build")
    try:
        os.replace(partial, final)
    except OSError:
        # Another worker finished the same key first (shared storage): keep theirs.
        if not (final / STAGE_JSON).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
        return read_info(cache, stage)
    _VERIFIED.add((str(final), info["stage_sha256"]))  # hashed just now
    return info


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
    real_dir(counter.parent, Path(cache), "the fault counters' folder", create=True)
    with open_update(counter, "the fault counter") as fh:
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
