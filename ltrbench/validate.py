"""Validation of a whole request before any work: what ``ltrbench.plan`` and ``ltrbench.run`` check
first, so that bad input fails in seconds, as one message, with nothing created in the cache or in
the output folder (docs/commands.md#errors-before-any-work).

In order (each a function called by :mod:`ltrbench.api`):

0. :func:`check_execution` (the execution options, the Ray address: form, port, something
   listening), :func:`check_names` (seeds are integers in :data:`SEED_RANGE`, no seed or method
   twice), and once the configuration is resolved :func:`check_storage` (the cache and data root
   folders): before anything is planned, so before the built-in world is generated.
1. :func:`check_output`: the output folder can be created and written (nothing is created now).
2. :func:`check_configs`: every run's resolved configuration: value ranges of every training
   recipe wherever it sits (epochs ≥ 1, lr > 0, batch ≥ 1, warm-up ≥ 0, known optimizer, sampler
   and schedule, a batch that splits evenly over ``devices`` × ``accumulate``), the data section (known augmentation, sizes ≥ 1), the backbone name, and every
   section's own ``check()`` (a plugin's section validates itself, e.g. LGR's fusion α in [0, 1]).
   Every section is checked, used by the run or not: a bad value is a mistake wherever it sits.
   Messages carry the full key path (``baseline.train.epochs=-1: must be at least 1``); every float
   value anywhere is finite (:func:`nonfinite_problems`: ``nan`` and ``inf`` pass every range check).
3. :func:`check_weights`: a weights file named by ``backbone.pretrained`` exists and is a format
   read without running code (:func:`ltrbench.backbones.check_weights_file`), an open_clip tag is
   known and cached or downloadable; skipped where the ``clip_weights`` stage is cached (its key
   needs no data set: :func:`ltrbench.stage_kinds.clip_weights_stage`).
4. (the data set is read by planning: its lists, labels and class file are checked there)
5. :func:`check_plan`, once the stages are planned, the one pass over the cache: no name the
   engine writes for a stage is a link planted in a shared cache (:mod:`ltrbench.safeio`); which
   stages are cached (verified); and for the stages that will run, every image they read is
   on disk (one ``os.listdir`` per folder) and every wiki file of a corpus they read decodes and
   is not empty (what a stage reads, its kind declares: :class:`ltrbench.stages.Reads`). It
   returns the keys of the cached stages, which the executor takes as done.

Steps 0–3 need no data set (:func:`check_request`); step 5 needs the plan.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import operator
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Sequence

from .backbones import check_weights_file, is_weights_path, tag_available
from .config import BenchConfig, TrainConfig
from .data.corpus import read_wiki_file, wiki_path
from .data.lists import missing_images
from .data.loaders import DatasetRef, open_dataset
from .data.samplers import SAMPLERS
from .data.transforms import AUGMENTS
from .errors import ConfigError, DataError, LtrBenchError, clip
from .resolve import RunSpec
from .registry import BACKBONES, METHODS, STAGES, WEIGHTS
from .safeio import refuse_links
from .stage_kinds import clip_weights_stage
from .stages import Stage, config_value, stage_paths, verify
from .train import OPTIMIZERS

_SHOWN = 5  # examples quoted per problem

#: ``train.schedule_shift`` values and what they mean (docs/algorithms.md#cosine-schedule, docs/algorithms.md#crt).
SCHEDULE_SHIFTS = {-1: "VL-LTR/DeiT: stepped after each epoch", 0: "stepped on the raw epoch",
                   1: "decoupling: stepped at the start of each epoch"}


# --------------------------------------------------------------------------- output folder


def check_output(out: Path) -> None:
    """Fail unless ``<out>/runs/`` can be created and written; create nothing."""
    out = Path(out)
    for p in (out, out / "runs"):
        if p.exists() and not p.is_dir():
            raise LtrBenchError(f"Output folder {out} cannot be written: {p} is a file, not a folder. "
                                "Pass --out DIR with a writable folder.")
    existing = out / "runs"
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise LtrBenchError(f"Output folder {out} cannot be created: {existing} is a file. Pass --out DIR with a "
                            "writable folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise LtrBenchError(f"Output folder {out} cannot be written: {existing} is not writable by this user (or "
                            "on a read-only file system). Pass --out DIR with a writable folder.")


# --------------------------------------------------------------------------- configuration


def train_problems(t: TrainConfig, path: str) -> list[str]:
    """Range and name problems of one training recipe at key path ``path`` (e.g. ``baseline.train``)."""
    out = []

    def bad(field: str, value: Any, why: str) -> None:
        out.append(f"{path}.{field}={clip(value)}: {why}")

    if t.epochs < 1:
        bad("epochs", t.epochs, "must be at least 1")
    if not t.lr > 0:
        bad("lr", t.lr, "must be greater than 0")
    if t.batch_size < 1:
        bad("batch_size", t.batch_size, "must be at least 1")
    if t.ref_batch_size is not None and t.ref_batch_size < 1:
        bad("ref_batch_size", t.ref_batch_size, "must be at least 1 (or null: the batch size)")
    if t.warmup_epochs < 0:
        bad("warmup_epochs", t.warmup_epochs, "must be at least 0")
    if t.min_lr < 0:
        bad("min_lr", t.min_lr, "must be at least 0")
    if t.weight_decay < 0:
        bad("weight_decay", t.weight_decay, "must be at least 0")
    if not 0 <= t.momentum < 1:
        bad("momentum", t.momentum, "must lie in [0, 1)")
    if t.optimizer not in OPTIMIZERS:
        bad("optimizer", t.optimizer, f"unknown optimizer; use one of {', '.join(OPTIMIZERS)}")
    if t.sampler not in SAMPLERS:
        bad("sampler", t.sampler, f"unknown sampler; use one of {', '.join(SAMPLERS)}")
    if t.samples_per_class < 1:
        bad("samples_per_class", t.samples_per_class, "must be at least 1")
    if t.devices < 1:
        bad("devices", t.devices, "must be at least 1 (data-parallel workers, one device each)")
    if t.accumulate < 1:
        bad("accumulate", t.accumulate, "must be at least 1 (micro-batches per optimizer step)")
    if t.batch_size >= 1 and t.devices >= 1 and t.accumulate >= 1 and t.batch_size % (t.devices * t.accumulate):
        split = f"{t.devices} devices" + (f" × {t.accumulate} micro-batches" if t.accumulate > 1 else "")
        bad("batch_size", t.batch_size, f"does not split evenly over {split}: the global batch must be a multiple "
            f"of train.devices × train.accumulate = {t.devices * t.accumulate}")
    if t.schedule_shift not in SCHEDULE_SHIFTS:
        bad("schedule_shift", t.schedule_shift, "unknown schedule; use "
            + ", ".join(f"{k} ({v})" for k, v in SCHEDULE_SHIFTS.items()))
    return out


def _data_problems(d: Any) -> list[str]:
    out = []
    if d.augment not in AUGMENTS:
        out.append(f"data.augment={d.augment}: unknown augmentation; use one of {', '.join(AUGMENTS)}")
    for name in ("image_size", "eval_resize"):
        v = getattr(d, name)
        if v is not None and v < 1:
            out.append(f"data.{name}={v}: must be at least 1 (or null: the backbone's)")
    if d.num_workers is not None and d.num_workers < 0:
        out.append(f"data.num_workers={d.num_workers}: must be at least 0 (or null: from the machine)")
    if d.eval_batch_size < 1:
        out.append(f"data.eval_batch_size={d.eval_batch_size}: must be at least 1")
    return out


def _walk(obj: Any, path: str) -> Iterable[tuple[str, TrainConfig]]:
    """Every training recipe inside a section, with its key path."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, TrainConfig):
            yield f"{path}.{f.name}", v
        elif dataclasses.is_dataclass(v):
            yield from _walk(v, f"{path}.{f.name}")


def config_problems(cfg: BenchConfig) -> list[str]:
    """Every problem of one resolved configuration (an empty list when it is valid)."""
    out: list[str] = []
    for name, sec in sorted(cfg.sections.items()):
        out += nonfinite_problems(sec, name)
        if name == "data":
            out += _data_problems(sec)
        for path, t in _walk(sec, name):
            out += train_problems(t, path)
        check = getattr(sec, "check", None)
        if callable(check):
            try:
                check()
            except ConfigError as e:
                out.append(str(e).rstrip("."))
    if cfg.backbone.name not in BACKBONES:
        try:
            BACKBONES.get(cfg.backbone.name)
        except LtrBenchError as e:
            out.append(f"backbone.name={cfg.backbone.name}: {str(e).rstrip('.')}")
    return out


def check_inline_devices(resolved: Sequence[tuple[RunSpec, BenchConfig]]) -> None:
    """The inline executor runs every stage in this process, so a training recipe that a run's
    method reads (its ``sections``) with ``train.devices`` > 1 is refused before anything is
    planned (the executor refuses a data-parallel stage too, :func:`ltrbench.execute.check_inline`)."""
    found: list[str] = []
    for spec, cfg in resolved:
        for name in METHODS.get(spec.method).sections:
            if name not in cfg.sections:
                continue
            for path, t in _walk(cfg.sections[name], name):
                item = f"{path}.devices={t.devices}"
                if t.devices > 1 and item not in found:
                    found.append(item)
    if found:
        raise ConfigError(f"{', '.join(found)}: a data-parallel stage needs Ray to start its workers; pass "
                          "--executor ray (an embedded Ray on this machine) or --ray-address HOST:PORT, or set "
                          "train.devices=1. Nothing was run.")


def check_configs(resolved: Sequence[tuple[RunSpec, BenchConfig]]) -> None:
    """Raise one :class:`ConfigError` listing every problem of every run's configuration."""
    problems: list[str] = []
    for spec, cfg in resolved:
        where = f" (run {spec.name}, seed {spec.seed})" if spec.variant else ""
        for p in config_problems(cfg):
            msg = p + where
            if msg not in problems:
                problems.append(msg)
    if problems:
        raise ConfigError("Invalid configuration, nothing was run: " + "; ".join(problems)
                          + ". Fix the value with --set KEY=VALUE or in the config file.")


def check_request(resolved: Sequence[tuple[RunSpec, BenchConfig]], cache: Path, *,
                  methods: Sequence[str] | None = None, seeds: Sequence[int] = (), executor: str | None = None) -> None:
    """What needs no data set read, in order: the request's method names and seeds (given once, in
    range), the cache and data root folders, every configuration (step 2); with
    ``executor="inline"``, that no training recipe is data-parallel (it needs Ray); then the
    weights (3)."""
    check_names(methods, seeds)
    check_storage(resolved, cache)
    check_configs(resolved)
    if executor == "inline":  # a data-parallel recipe needs Ray: said before the world is generated
        check_inline_devices(resolved)
    check_weights(resolved, cache)


# --------------------------------------------------------------------------- weights


def check_weights(resolved: Sequence[tuple[RunSpec, BenchConfig]], cache: Path) -> None:
    """Every run's backbone weights can be had (step 3), unless they were converted before (the
    ``clip_weights`` stage is cached): a weights file exists and is read without running code; an
    open_clip tag is known and cached or downloadable."""
    seen: set[tuple[str, str, bool]] = set()
    for _spec, cfg in resolved:
        b = cfg.backbone
        if (b.name, b.pretrained, b.trust_torchscript) in seen:
            continue
        seen.add((b.name, b.pretrained, b.trust_torchscript))
        if b.pretrained in WEIGHTS:
            source = WEIGHTS.get(b.pretrained)
            if b.name not in source.backbones:
                raise ConfigError(f"backbone.pretrained={b.pretrained}: generated weights for the backbones "
                                  f"{', '.join(source.backbones)} only, not {b.name}; pass an open_clip tag or a "
                                  "weights file.")
            continue
        if verify(cache, clip_weights_stage(cfg)):  # converted before (a file's key holds its SHA-256)
            continue
        if is_weights_path(b.pretrained):
            path = Path(b.pretrained).expanduser()
            if not path.is_file():
                raise LtrBenchError(f"backbone.pretrained={b.pretrained}: CLIP weights file {path} does not exist. "
                                    f"Pass an existing file of {b.name} weights (an open_clip state dict, a "
                                    ".safetensors file or OpenAI's TorchScript release) with --set "
                                    "backbone.pretrained=FILE, or an open_clip tag.")
            check_weights_file(path, trust_torchscript=b.trust_torchscript)
        else:
            tag_available(b.name, b.pretrained)


# --------------------------------------------------------------------------- the plan against the cache


def check_plan(stages: Sequence[Stage], cache: Path, *, progress: bool = False) -> frozenset[str]:
    """Step 5: the planned stages against the cache, before any work. Raises on a planted link or on
    data that is not there; returns the keys of the stages whose artifacts are cached and verified
    (the executor's done set)."""
    check_stage_paths(stages, cache)
    done = frozenset(s.key for s in stages if verify(cache, s))
    check_data(stages, done, progress=progress)
    return done


# --------------------------------------------------------------------------- data


def _reads(stage: Stage) -> tuple[tuple[str, ...], str | None]:
    reads = STAGES.get(stage.kind).reads
    if reads is None or config_value(stage.config, "dataset") is None:
        return (), None
    r = reads(stage.config)
    return tuple(r.splits), r.corpus


def check_data(stages: Sequence[Stage], done: frozenset[str] = frozenset(), *, progress: bool = False) -> None:
    """The images and wiki files the stages to run (those not in ``done``) will read are there and
    readable (step 5)."""
    images: dict[tuple, tuple[Any, set[str]]] = {}
    corpora: dict[tuple, Any] = {}
    for s in stages:
        splits, corpus = _reads(s)
        if not splits and corpus is None:
            continue
        if s.key in done:
            continue
        ref = DatasetRef.from_key(config_value(s.config, "dataset"), s.env.get("data_root"))
        ident = (ref.name, ref.root, repr(sorted(ref.options.items())))
        if splits:
            ds = open_dataset(ref)
            images.setdefault(ident, (ds, set()))[1].update(splits)
        if corpus == "wiki_prompt":
            corpora.setdefault(ident, open_dataset(ref))
    for ds, splits in images.values():
        _check_images(ds, sorted(splits), progress)
    for ds in corpora.values():
        _check_wiki(ds)


def _check_images(ds: Any, splits: Sequence[str], progress: bool) -> None:
    for split in splits:
        pairs = ds.split(split)
        missing = missing_images(ds.root, pairs, progress=progress, desc=f"{ds.name} {split}: images on disk")
        if missing:
            ex = ", ".join(missing[:_SHOWN])
            raise DataError(
                f"{len(missing):,} of the {len(pairs):,} images of the {split} split of {ds.name} are absent under "
                f"{ds.root} (e.g. {ex}); nothing was run. Put them there or fix the data root; "
                f"`python run_bench.py check-data --dataset {ds.name} --data-root {ds.root}` lists them all."
            )


def _check_wiki(ds: Any) -> None:
    if ds.wiki_dir is None or not Path(ds.wiki_dir).is_dir():
        return  # every class falls back to its prompts, with a warning (ltrbench.data.corpus)
    bad = []
    for k in range(ds.num_classes):
        path = wiki_path(ds.wiki_dir, k)
        if not path.is_file():
            continue
        try:
            read_wiki_file(path)
        except DataError as e:
            bad.append(str(e))
    if bad:
        more = f" ({len(bad) - _SHOWN} more like these)" if len(bad) > _SHOWN else ""
        raise DataError(f"{len(bad)} wiki files of {ds.name} cannot be used, nothing was run: "
                        + " ".join(bad[:_SHOWN]) + more)


# --------------------------------------------------------------------------- before any work (issue 23)
#
# What is checked before anything is planned or written, so that every bad input of a request
# fails in seconds with one paragraph and leaves nothing in the cache or the output folder: the
# request itself (seeds, names), the execution options and the Ray address, the cache and data
# root folders. Every numeric config value is finite (config_problems); a planted link at a name
# the engine writes for a stage is refused before any stage runs (check_stage_paths).

#: Seeds are what every generator ltrbench seeds accepts: numpy's legacy seeding takes 0 ≤ seed < 2**32
#: (torch takes more, Python's ``random`` anything), so that is the range.
SEED_RANGE = (0, 2**32)


def check_names(methods: Sequence[str] | None, seeds: Sequence[Any]) -> None:
    """The seeds are integers in :data:`SEED_RANGE`, none twice; no method is named twice."""
    lo, hi = SEED_RANGE
    for s in seeds:
        try:
            value = operator.index(s) if not isinstance(s, bool) else None  # an int (numpy's too), never 1.5
        except TypeError:
            value = None
        if value is None:
            raise ConfigError(f"Seed {clip(repr(s))} is not an integer; seeds are integers from {lo} to {hi - 1} "
                              "(--seeds 0,1,2).")
        if not lo <= value < hi:
            raise ConfigError(f"Seed {clip(value)} is outside {lo}..{hi - 1}, the seeds numpy and torch both accept; "
                              "pass seeds in that range (--seeds 0,1,2).")
    dup = sorted({int(s) for s in seeds if [int(x) for x in seeds].count(int(s)) > 1})
    if dup:
        raise ConfigError(f"Seed {', '.join(map(str, dup))} is given more than once; each seed is one replicate, so a "
                          "repeated seed would count the same run twice. Pass each seed once.")
    if methods is not None:
        twice = sorted({m for m in methods if list(methods).count(m) > 1})
        if twice:
            raise ConfigError(f"Method {', '.join(clip(m) for m in twice)} is named more than once; name each method "
                              "once (--methods a,b).")


def nonfinite_problems(obj: Any, path: str) -> list[str]:
    """Every float field of a config section (nested ones too) that is NaN or infinite, by key path."""
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += nonfinite_problems(v, f"{path}.{f.name}")
        elif isinstance(v, float) and not math.isfinite(v):
            out.append(f"{path}.{f.name}={v}: must be a finite number")
        elif isinstance(v, tuple):
            out += [f"{path}.{f.name}={clip(v)}: every value must be a finite number"
                    for _ in [0] if any(isinstance(x, float) and not math.isfinite(x) for x in v)]
    return out


def check_execution(opts: Any) -> None:
    """The execution options (:class:`ltrbench.execute.ExecOptions`: retries, device, CPUs per stage)
    and the Ray address (:func:`ltrbench.cluster.check_address`: form, port, something listening)."""
    from .cluster import check_address  # the address check imports no Ray

    opts.check()
    if opts.address is not None:
        check_address(opts.address)


def _folder_problem(path: Path, *, write: bool) -> str | None:
    """Why ``path`` cannot serve as a folder ltrbench reads (and, with ``write``, writes); None if it can."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{path} is a link to {os.readlink(path)!r}, which does not exist"
        if not write:
            return None  # the data set's own check says what a missing root needs
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"it cannot be created: {parent} is a file, not a folder"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"it cannot be created: {parent} is not writable by this user"
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a loop of symbolic links"
        if e.errno == errno.ENOTDIR:
            return f"a part of {path} is a file, not a folder"
        return f"{path} cannot be reached ({e.strerror or e})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is a file, not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable by this user"
    if write and not os.access(path, os.W_OK):
        return f"{path} is not writable by this user (or on a read-only file system)"
    return None


def check_storage(resolved: Sequence[tuple[RunSpec, BenchConfig]], cache: Path) -> None:
    """The cache can be created or is a writable folder; every data root given is a readable folder
    (a data set that generates its data, the built-in world, says itself when it cannot write it)."""
    problem = _folder_problem(Path(cache), write=True)
    if problem:
        raise LtrBenchError(f"The cache {cache} cannot be used: {problem}. Set LTRBENCH_CACHE to a writable folder "
                            "(it is created if missing), e.g. export LTRBENCH_CACHE=~/.cache/ltrbench.")
    for root in sorted({cfg.data.root for _spec, cfg in resolved if cfg.data.root}):
        problem = _folder_problem(Path(root).expanduser(), write=False)
        if problem:
            raise DataError(f"The data root {root} cannot be used: {problem}. Pass the folder holding the data set "
                            "with --data-root DIR (or data.root in a config file).")


def check_stage_paths(stages: Sequence[Stage], cache: Path) -> None:
    """No name the engine writes for a stage to run is a planted link (:mod:`ltrbench.safeio`):
    every one is named in one paragraph."""
    named = [(f"{what} of stage {s.describe()}", p) for s in stages for what, p in stage_paths(cache, s).items()]
    refuse_links([*named, ("the fault counters' folder", Path(cache) / ".faults")], f"the cache {cache}",
                 "nothing was run")
