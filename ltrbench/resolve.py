"""Resolve, the first step of a request's route (resolve → plan → validate → execute → record):
a :class:`Request` becomes its runs (:class:`RunSpec`: method, data set, backbone, seed, variant)
and each run's fully resolved configuration (defaults → data set YAML → files → overrides → the
run's own), nothing read but names and YAML. Unknown names fail here, with "did you mean".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .config import BenchConfig, load_config
from .errors import ConfigError
from .registry import BACKBONES, DATASETS, METHODS, WEIGHTS

if TYPE_CHECKING:
    from .tables import TableSpec


@dataclass(frozen=True)
class RunSpec:
    method: str
    dataset: str
    backbone: str | None = None
    seed: int = 0
    variant: str = ""  # a name for the overrides below (a table row), "" for the plain method
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        v = f"[{self.variant}]" if self.variant else ""
        return f"{self.method}{v}"


@dataclass(frozen=True)
class Request:
    """What to run: ``methods`` (None: :func:`default_methods`; ``["all"]``: every registered
    method) × ``seeds`` on ``dataset``, or every row of paper table ``table`` (on the paper's data
    sets, or on ``dataset`` when given); the configuration resolved as the CLI does: data set YAML → ``config_files`` → ``overrides``
    (``section.field=value``); ``data_root``: the data set's root folder."""

    methods: tuple[str, ...] | None = None
    dataset: str | None = None
    backbone: str | None = None
    seeds: tuple[int, ...] = (0,)
    overrides: tuple[str, ...] = ()
    config_files: tuple[str, ...] = ()
    data_root: str | None = None
    table: int | str | None = None  # paper table N, or a table beyond the paper by name

    def __post_init__(self) -> None:  # lists in, tuples kept (a request is a value)
        if isinstance(self.methods, str):
            raise ConfigError(f"methods={self.methods!r}: pass a list of names, e.g. methods=[{self.methods!r}].")
        fix = {"methods": None if self.methods is None else tuple(self.methods), "seeds": tuple(self.seeds),
               "overrides": tuple(self.overrides), "config_files": tuple(str(f) for f in self.config_files)}
        if self.data_root:  # absolute: a Ray worker may run in another folder (the shipped code's)
            fix["data_root"] = str(Path(self.data_root).expanduser().absolute())
        for k, v in fix.items():
            object.__setattr__(self, k, v)


def resolve(request: Request) -> list[tuple[RunSpec, BenchConfig]]:
    """Every run of ``request`` with its resolved configuration."""
    return resolve_configs(run_specs(request), files=request.config_files, overrides=request.overrides,
                           data_root=request.data_root)


def run_specs(request: Request) -> list[RunSpec]:
    """The runs of a request, every name checked before anything is resolved."""
    r = request
    try:
        seeds = [int(s) for s in r.seeds]
    except (TypeError, ValueError):
        raise ConfigError(f"seeds={list(r.seeds)!r}: seeds are integers, e.g. seeds=[0, 1] (--seeds 0,1).") from None
    if not seeds:
        raise ConfigError("No seed given; pass at least one, e.g. seeds=[0] (--seeds 0).")
    if r.table is not None:
        if r.methods is not None:
            raise ConfigError("A paper table fixes its methods: pass either methods or table, not both.")
        from .tables import any_table  # pandas: only a table's request needs it

        specs = table_runs(any_table(r.table), seeds, r.dataset, r.backbone)
    else:
        if r.dataset is None:
            raise ConfigError("No data set given; pass one, e.g. dataset='synthetic_lt' (--dataset NAME).")
        methods = default_methods() if r.methods is None else list(r.methods)
        if methods == [ALL]:
            methods = METHODS.names()
        elif ALL in methods:
            raise ConfigError(f"methods={methods!r}: {ALL!r} stands alone (every registered method); name the "
                              "methods, or pass only 'all'.")
        if not methods:
            raise ConfigError("The list of methods is empty; name at least one (see `run_bench.py list`), or "
                              "leave it out to run the default methods ('all': every registered method).")
        specs = [RunSpec(m, r.dataset, r.backbone, seed) for seed in seeds for m in methods]
    for s in specs:  # unknown names: one error with "did you mean", before anything is resolved or imported
        METHODS.check(s.method)
        DATASETS.check(s.dataset)
        if s.backbone is not None:
            BACKBONES.check(s.backbone)
    return specs


#: The method list that stands for every registered method (``--methods all``).
ALL = "all"


def default_methods() -> list[str]:
    """The methods of a request that names none: every registered method whose class does not set
    ``default_run = False`` (the long-tail loss family: ``--methods all`` or ``--table lt_losses``)."""
    return [n for n, info in METHODS.summaries().items() if info.get("default_run", True)]


def table_runs(spec: TableSpec, seeds: Sequence[int], dataset: str | None = None,
               backbone: str | None = None) -> list[RunSpec]:
    """The RunSpecs of a table's runnable rows. ``dataset`` (e.g. the built-in world) replaces the
    paper's data sets, and then the backbone is the data set config's unless ``backbone`` is given."""
    out = []
    for seed in seeds:
        for r in spec.runs:
            ds = dataset or r.dataset
            bb = backbone or (None if dataset else r.backbone)
            out.append(RunSpec(r.method, ds, bb, seed, spec.variant(r), r.overrides))
    return out


def resolve_configs(
    specs: Sequence[RunSpec],
    *,
    files: Sequence[str] = (),
    overrides: Sequence[str] = (),
    data_root: str | None = None,
) -> list[tuple[RunSpec, BenchConfig]]:
    """Every run's fully resolved configuration (defaults → YAML → files → overrides → the run's own)."""
    out = []
    for spec in specs:
        METHODS.get(spec.method)
        extra = [f"data.root={data_root}"] if data_root else []
        cfg = load_config(spec.dataset, spec.backbone, files, [*overrides, *extra, *spec.overrides])
        out.append((spec, default_pretrained(cfg, overrides)))
    return out


def default_pretrained(cfg: BenchConfig, overrides: Sequence[str]) -> BenchConfig:
    """Pair a backbone with its usual weights when only the name was changed (--backbone): weights
    of a registered source fit only its own backbones, and a backbone whose default weights come
    from a source does not take a tag."""
    b = cfg.backbone
    spec = BACKBONES.get(b.name)
    explicit = any(o.startswith("backbone.pretrained=") for o in overrides)
    generated, wants_generated = b.pretrained in WEIGHTS, spec.default_pretrained in WEIGHTS
    mismatch = generated != wants_generated or (generated and b.name not in WEIGHTS.get(b.pretrained).backbones)
    if mismatch and not explicit:
        secs = dict(cfg.sections)
        secs["backbone"] = dataclasses.replace(b, pretrained=spec.default_pretrained)
        return BenchConfig(sections=secs)
    return cfg
