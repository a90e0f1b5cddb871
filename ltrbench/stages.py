"""Stages: content-keyed, cached units of work, and the cache store that builds and verifies them
(the plan, a de-duplicated DAG of them in input order, is :mod:`ltrbench.planner`).

A stage is a pure function of its config, its inputs and (for a stage that draws random numbers
per run) the run's seed (docs/design.md#stages): the engine builds
``key = hash(kind, kind version, config, run seed, {input name: input key})`` (:attr:`Stage.key`);
a plugin never writes a key. A kind declares its config as a frozen dataclass and the names of its
inputs (:func:`stage_kind`); planning checks both (:class:`Stage`), so a field left out of a config
cannot silently share a cache entry between two configurations, and an input is read by its name
(``ctx.input("model")``), never by position. Its artifact lives at
``<cache>/<kind>/<key>/``; it is built in ``<cache>/<kind>/<key>.partial/`` (where training
stages keep their per-epoch checkpoint, so a crash resumes) and renamed into place when complete,
with ``stage.json`` written last. A finished key is never recomputed, and equal stages of
different runs are one node of the DAG. A file lock per key (``<key>.lock``) keeps two processes
sharing a cache from building the same stage at once.

``env`` carries what may differ between machines without changing the result (a data root, the
number of loader workers): it is passed to the stage function but not hashed; neither is ``label``
(a name for people: logs, TensorBoard, tables).

Stage functions are registered by kind in :data:`ltrbench.registry.STAGES` and receive only a
:class:`StageContext`, so they run the same inline or in a Ray worker. A training stage trains with
:meth:`StageContext.train` (heads on cached features with :func:`ltrbench.head_fit.train_head`;
both go through :func:`train_in`): its resume checkpoints live in ``ctx.work``, a scratch folder
inside the ``.partial`` folder that the engine deletes once the stage function has returned, and
its TensorBoard events (loss, learning rate and, where the recipe validates, val accuracy per
epoch) in ``tb/<label>/`` of the artifact, so ``tensorboard --logdir <cache>`` shows every
training stage. Every stage also leaves ``log.txt``: the library's log lines while it was built
(INFO and above, per-epoch rows included), whatever the console shows.

Seeds (the rule). A stage's random generators are seeded from values that do not change when a
hyperparameter does: ``stage.seed = int(sha256(["seed", kind, run seed])[:8], 16)``
(:attr:`Stage.seed`), where the run seed is the seed of the run that planned the stage for a stage
that draws random numbers per run (``Stage.run_seed``: finetune, cvlp, lgr, head, evaluate, a
drawn features set, random anchors) and None for a stage that is the same for every seed
(clip_weights, features, text_features): those are shared by every run and seed whatever run
planned them first, and their seed, from the kind alone, keeps them deterministic. Before the
stage function runs, python's, numpy's and torch's global generators are seeded with
``stage.seed``; a stage seeds its loaders, samplers and training loop with ``ctx.seed`` (the same
value). So the rows of a sweep or an ablation (two learning rates, two betas) share initial
weights and data order (common random numbers), and a change that moves a key moves no number.
Neither the label nor any config value enters the seed; ``stage.json`` records ``seed`` and
``run_seed``.

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
import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

try:
    import fcntl
    import resource
except ImportError:  # pragma: no cover - not POSIX: stages are built without a lock
    fcntl = None  # type: ignore[assignment]
    resource = None  # type: ignore[assignment]

from .data.images import recording_replacements
from .data.samplers import REVISIONS
from .config import TrainConfig
from .devices import describe, stage_device
from .distributed import announce, hear, shard
from .errors import CacheError, LtrBenchError
from .fingerprints import sha256_file
from .registry import STAGES
from .safeio import PLANTED, UnsafePathError, links_inside, open_update, real_dir, refuse_link, write_atomic
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
    gpus: float | Callable[[Any], float] = 0.0
    memory_gb: float = 2.0
    loader: bool | Callable[[Any], bool] = False
    reads: Callable[[Any], Reads] | None = None
    #: The frozen dataclass of the kind's config (None: a plain mapping, for tests and old plugins).
    config: type | None = None
    #: The names of the kind's inputs (``"name?"``: optional); None: whatever names the planner gives.
    inputs: tuple[str, ...] | None = None

    def check(self, config: Any, names: Sequence[str]) -> None:
        """Raise unless ``config`` and the input ``names`` are what this kind declares (planning)."""
        if self.config is not None and not isinstance(config, self.config):
            raise LtrBenchError(f"stage kind {self.name!r} takes a {self.config.__name__} config, got "
                                f"{type(config).__name__}; build it as {self.config.__name__}(...).")
        if self.config is None and not isinstance(config, Mapping):
            raise LtrBenchError(f"stage kind {self.name!r} declares no config class, so its config must be a "
                                f"mapping, got {type(config).__name__}; pass config=<the dataclass> to stage_kind.")
        if self.inputs is None:
            return
        required = {n for n in self.inputs if not n.endswith("?")}
        known = {n.rstrip("?") for n in self.inputs}
        unknown, missing = sorted(set(names) - known), sorted(required - set(names))
        if unknown or missing:
            raise LtrBenchError(f"stage kind {self.name!r} takes the inputs {', '.join(self.inputs) or '(none)'} "
                                f"('?': optional); got {', '.join(names) or '(none)'}"
                                + (f": unknown {', '.join(unknown)}" if unknown else "")
                                + (f": missing {', '.join(missing)}" if missing else "") + ".")

    def gpus_for(self, config: Mapping[str, Any]) -> float:
        """The GPU share a stage of this kind with ``config`` asks for where GPUs are used."""
        return float(self.gpus(config) if callable(self.gpus) else self.gpus)

    def uses_loader(self, config: Mapping[str, Any]) -> bool:
        """Whether a stage of this kind with ``config`` runs DataLoader worker processes."""
        return bool(self.loader(config) if callable(self.loader) else self.loader)


def stage_kind(name: str, version: str = "1", gpus: float | Callable[[Any], float] = 0.0,
               memory_gb: float = 2.0, loader: bool | Callable[[Any], bool] = False,
               reads: Callable[[Any], Reads] | None = None, *, config: type | None = None,
               inputs: Sequence[str] | None = None):
    """Decorator registering ``fn(ctx) -> info`` as the stage kind ``name``.

    ``config``: the frozen dataclass of the kind's config (every field is part of the key: a field
    that does not change the output does not belong there); ``inputs``: the names of its inputs
    (``"name?"`` optional; None: any names, e.g. ``evaluate``'s, which its method chooses). Bump
    ``version`` when the code's output changes, so cached artifacts are not reused. ``gpus``,
    ``memory_gb`` and ``loader``: what the kind asks of a scheduler (:class:`StageKind`);
    ``gpus``, ``loader`` and ``reads`` may be functions of the stage's config.
    """
    if config is not None and not (dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen):
        raise LtrBenchError(f"stage kind {name!r}: config={config!r} must be a frozen dataclass "
                            "(@dataclass(frozen=True)).")

    def deco(fn):
        STAGES.add(name, StageKind(name, fn, version, gpus, memory_gb, loader, reads, config,
                                   None if inputs is None else tuple(inputs)))
        return fn

    return deco


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_json(config: Any) -> Any:
    """A stage config as plain JSON data (a dataclass as its fields, recursively): what is hashed
    into the key and written into ``stage.json``. A dataclass field named in the class's
    ``KEY_NEUTRAL_DEFAULTS`` is left out while it holds that value (a field added after keys were
    recorded, e.g. ``TrainConfig.devices``: every earlier key stays as it was)."""
    return json.loads(_canonical(_plain(config)))


def _plain(obj: Any) -> Any:
    """``dataclasses.asdict`` without the key-neutral defaults (:func:`config_json`)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        neutral = getattr(type(obj), "KEY_NEUTRAL_DEFAULTS", {})
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.name in neutral and getattr(obj, f.name) == neutral[f.name])}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple, as asdict keeps it
        return type(obj)(*(_plain(v) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return copy.deepcopy(obj)


def config_value(config: Any, name: str, default: Any = None) -> Any:
    """Field ``name`` of a stage config, a dataclass or a mapping (``default`` when absent)."""
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def _sampler_revisions(obj: Any) -> dict[str, int]:
    """``{sampler: revision}`` of every revised sampler a config names (``"sampler": name`` at any
    depth, :data:`ltrbench.data.samplers.REVISIONS`): a stage that draws with a sampler whose draws
    changed gets a new key without a field of its own."""
    found: dict[str, int] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "sampler" and isinstance(v, str) and v in REVISIONS:
                found[v] = REVISIONS[v]
            else:
                found.update(_sampler_revisions(v))
    elif isinstance(obj, list):
        for v in obj:
            found.update(_sampler_revisions(v))
    return found


def by_kind(inputs: Iterable["Stage"]) -> dict[str, "Stage"]:
    """Inputs named by their kind (``kind.1`` for a second input of one kind)."""
    ins, names = _named(tuple(inputs), ())
    return dict(zip(names, ins))


def _named(inputs: Any, roles: Sequence[str]) -> tuple[tuple["Stage", ...], tuple[str, ...]]:
    """(inputs, names): a mapping's names, else ``roles``, else each input's kind (``kind.1`` for a
    second input of one kind)."""
    if isinstance(inputs, Mapping):
        return tuple(inputs.values()), tuple(inputs)
    inputs = tuple(inputs)
    if roles:
        if len(roles) != len(inputs):
            raise LtrBenchError(f"{len(inputs)} inputs but {len(roles)} names ({', '.join(roles)}).")
        return inputs, tuple(roles)
    names: list[str] = []
    for s in inputs:
        n, i = s.kind, 1
        while n in names:
            n, i = f"{s.kind}.{i}", i + 1
        names.append(n)
    return inputs, tuple(names)


@dataclass(frozen=True, eq=False)
class Stage:
    """One node of the DAG. ``config``, ``run_seed`` and the named inputs define the key; ``env``
    and ``label`` do not.

    ``inputs`` may be given as a mapping ``{name: stage}`` (what planners write); it is stored as
    the tuple of stages with their names in ``roles``. A kind that declares its config and input
    names (:func:`stage_kind`) has both checked here, at planning.
    """

    kind: str
    config: Any
    inputs: tuple["Stage", ...] = ()
    env: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    roles: tuple[str, ...] = ()  # the name of each input (same order), for StageContext.input
    run_seed: int | None = None  # the seed of the run, for a stage that draws per run (module docstring)

    def __post_init__(self) -> None:
        inputs, roles = _named(self.inputs, self.roles)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "roles", roles)
        if len(set(roles)) != len(roles):
            raise LtrBenchError(f"stage {self.kind}[{self.label}]: two inputs share a name ({', '.join(roles)}).")
        STAGES.get(self.kind).check(self.config, roles)

    @cached_property
    def key(self) -> str:
        version = STAGES.get(self.kind).version
        conf = config_json(self.config)
        payload = [self.kind, version, conf, self.run_seed, {r: s.key for r, s in zip(self.roles, self.inputs)}]
        revisions = _sampler_revisions(conf)
        if revisions:
            payload.append(revisions)
        return hashlib.sha256(_canonical(payload).encode()).hexdigest()[:16]

    @cached_property
    def seed(self) -> int:
        """The seed of the stage's generators: from its kind and run seed only (module docstring)."""
        return int(hashlib.sha256(_canonical(["seed", self.kind, self.run_seed]).encode()).hexdigest()[:8], 16)

    def named_inputs(self) -> dict[str, "Stage"]:
        """The inputs by name."""
        return dict(zip(self.roles, self.inputs))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stage) and other.key == self.key

    def describe(self) -> str:
        return f"{self.kind}[{self.label or self.key[:8]}]"


@dataclass
class StageContext:
    """What a stage function sees: its stage, where to write, its inputs' finished artifacts by
    name (``paths``; read them with :meth:`input`), its config and its seed."""

    stage: Stage
    out: Path  # the .partial folder to write into
    cache: Path
    paths: Mapping[str, Path]  # the artifact folder of each input, by name
    progress: bool = True

    @classmethod
    def of(cls, stage: Stage, out: Path, cache: Path, progress: bool = True) -> "StageContext":
        """The context of ``stage`` writing into ``out``, its inputs' artifacts in ``cache``."""
        return cls(stage, Path(out), Path(cache), {r: artifact_dir(cache, s) for r, s in zip(stage.roles, stage.inputs)},
                   progress)

    @property
    def config(self) -> Any:
        """The stage's config: an instance of its kind's config class."""
        return self.stage.config

    @property
    def env(self) -> Mapping[str, Any]:
        return self.stage.env

    @property
    def seed(self) -> int:
        """The seed for the stage's loaders, samplers and training loop (:attr:`Stage.seed`)."""
        return self.stage.seed

    @property
    def work(self) -> Path:
        """Scratch space (resume checkpoints): deleted by the engine when the stage has finished."""
        return self.out / "work"

    def input(self, name: str) -> Path:
        """The artifact folder of the input named ``name``."""
        if name not in self.paths:
            raise KeyError(f"stage {self.stage.describe()} has no input named {name!r}; it has "
                           f"{', '.join(self.paths) or 'none'}")
        return Path(self.paths[name])

    def has_input(self, name: str) -> bool:
        return name in self.paths

    role = input  # the old names
    has_role = has_input

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
    artifact, its ``.partial`` folder, its lock file and its log (:mod:`ltrbench.safeio`'s rule and
    paragraph, checked here, where the names are made, before any of them is written)."""
    for what, p in stage_paths(cache, stage).items():
        if os.path.islink(p):
            raise UnsafePathError(PLANTED.format(what=f"{what} of stage {stage.describe()}", path=p,
                                                 found=f"it is a symbolic link to {os.readlink(p)!r}"))


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
    with _Announce() as announce:  # rank 0 of a data-parallel group tells the others whether it builds
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
            return _build(stage, cache, final, progress, dict(record or {}), announce)


class _Announce:
    """Rank 0's word to the other workers of a data-parallel group (:func:`follow_stage`): True
    just before the stage function runs, False when it will not run (the stage was done, or the
    build failed before it started). Said once; nothing outside a group."""

    def __init__(self) -> None:
        self.said = not shard().parallel

    def __call__(self, building: bool) -> None:
        if not self.said:
            self.said = True
            announce(building)

    def __enter__(self) -> "_Announce":
        return self

    def __exit__(self, *exc: object) -> None:
        self(False)


def follow_stage(stage: Stage, cache: str | os.PathLike, progress: bool = False) -> bool:
    """A data-parallel worker of rank > 0 (:mod:`ltrbench.parallel`): wait for rank 0's word, then
    run the stage function as rank 0 does (the same seed, the same inputs), in step with it inside
    the training loop, into a scratch folder that is deleted afterwards: rank 0 alone writes the
    artifact and its checkpoints. Returns whether the function ran."""
    if not hear():
        return False
    kind = STAGES.get(stage.kind)
    scratch = Path(tempfile.mkdtemp(prefix=f"ltrbench-{stage.kind}-{stage.key}-rank{shard().rank}-"))
    try:
        seed_everything(stage.seed)
        ctx = StageContext.of(stage, scratch, Path(cache), progress)
        with recording_replacements():
            kind.fn(ctx)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return True


def stage_devices(stage: Stage) -> int:
    """The data-parallel workers ``stage`` trains on: the largest ``devices`` of the training
    recipes (:class:`~ltrbench.config.TrainConfig`) in its config, 1 where it has none."""
    return max((t.devices for t in _recipes(stage.config)), default=1)


def _recipes(obj: Any) -> Iterable[TrainConfig]:
    if isinstance(obj, TrainConfig):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _recipes(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _recipes(v)


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


def _build(stage: Stage, cache: Path, final: Path, progress: bool, record: dict[str, Any],
           announce: Callable[[bool], None] = lambda building: None) -> dict[str, Any]:
    partial = final.with_name(final.name + ".partial")
    real_dir(partial, cache, f"the build folder of stage {stage.describe()}", create=True)
    links = links_inside(partial)
    if links:  # nothing below a build folder is a link ltrbench made: never write or delete through one
        refuse_link(links[0], f"a file in the build folder of stage {stage.describe()}")
    _clear_partial(partial)
    for s in stage.inputs:
        problem = check_artifact(cache, s, full=True).problem
        if problem is not None:
            raise CacheError(f"stage {stage.describe()} cannot start: its input {s.describe()} "
                             f"({artifact_dir(cache, s)}) is not a verified artifact: {problem}. Run again: "
                             "the input is then checked and rebuilt first.")
    kind = STAGES.get(stage.kind)
    dev = stage_device()  # before any work: --device cuda on a host without CUDA fails here
    announce(True)
    with stage_log(partial / "log.txt"):
        log.info("stage %s: computing (key %s) on %s", stage.describe(), stage.key, dev)
        # Every stage starts from generators seeded by its own seed (the module docstring's rule), so
        # its result never depends on what ran before it in the same process, nor on its key.
        seed_everything(stage.seed)
        t0 = time.time()
        ctx = StageContext.of(stage, partial, cache, progress)
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
        "config": config_json(stage.config),
        "inputs": [s.key for s in stage.inputs],
        "input_names": list(stage.roles),
        "seed": stage.seed,
        "run_seed": stage.run_seed,
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
