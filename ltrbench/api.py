"""The library API: :func:`plan` (the de-duplicated stage DAG of a request) and :func:`run` (plan,
execute, collect one tidy row per run). The CLI, the bench scripts and the tests all go through
these two functions.

    import ltrbench
    df = ltrbench.run(["baseline", "zeroshot"], "synthetic_lt", seeds=[0, 1])
    df[["method", "seed", "overall", "few"]]

A request is methods × seeds on one data set (or every row of a paper table, ``table=N``), with
the configuration resolved as the CLI does: data set YAML → ``config_files`` → ``overrides``
(``section.field=value``). Every stage is cached under ``$LTRBENCH_CACHE`` by content, so a second
call computes only what changed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from . import fingerprints, validate
from .errors import ConfigError
from .execute import EXECUTORS, execute
from .paths import cache_root
from .plan import PlannedRun, RunSpec, plan_runs, resolve_configs
from .registry import DATASETS, METHODS
from .results import build_record, load_results, write_result
from .stages import Stage, is_done, topological
from .tables import load_table, table_runs

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A request resolved into runs and the stages they need (each key once, inputs first)."""

    runs: list[PlannedRun]
    stages: list[Stage]
    cache: Path

    @property
    def targets(self) -> list[Stage]:
        """The runs' final (``evaluate``) stages."""
        return [r.target for r in self.runs]

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: kind, label, key, its inputs' keys, and whether it is cached."""
        return pd.DataFrame([{"kind": s.kind, "label": s.label, "key": s.key, "inputs": [i.key for i in s.inputs],
                              "cached": is_done(self.cache, s)} for s in self.stages])


def _specs(methods: Sequence[str] | None, dataset: str | None, backbone: str | None, seeds: Sequence[int],
           table: int | None) -> list[RunSpec]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("No seed given; pass at least one, e.g. seeds=[0] (--seeds 0).")
    if table is not None:
        if methods is not None:
            raise ConfigError("A paper table fixes its methods: pass either methods or table, not both.")
        specs = table_runs(load_table(table), seeds, dataset, backbone)
    else:
        if dataset is None:
            raise ConfigError("No data set given; pass one, e.g. dataset='synthetic_lt' (--dataset NAME).")
        methods = METHODS.names() if methods is None else list(methods)
        if not methods:
            raise ConfigError("The list of methods is empty; name at least one (see `run_bench.py list`), or "
                              "leave it out to run every registered method.")
        specs = [RunSpec(m, dataset, backbone, seed) for seed in seeds for m in methods]
    for s in specs:  # unknown names: one error with "did you mean", before anything is resolved
        METHODS.get(s.method)
        DATASETS.get(s.dataset)
    return specs


def plan(methods: Sequence[str] | None, dataset: str | None, *, backbone: str | None = None,
         seeds: Sequence[int] = (0,), overrides: Sequence[str] = (), config_files: Sequence[str | Path] = (),
         data_root: str | None = None, table: int | None = None, progress: bool = False) -> Plan:
    """Resolve a request into its runs and de-duplicated stage DAG, without running anything.

    ``methods=None`` means every registered method; ``table=N`` every row of paper table N (on the
    paper's data sets, or on ``dataset`` when given). Everything is validated here, before any work
    (:mod:`ltrbench.validate`): names, every run's configuration, the weights, the data root, and
    the images and wiki files the stages to run will read. Bad input raises a
    :class:`~ltrbench.errors.LtrBenchError` and leaves the cache as it was (the built-in world is
    generated when its data set is first read, after the configuration and weights checked out).
    ``progress``: bars for the world's generation and the image check.
    """
    specs = _specs(methods, dataset, backbone, seeds, table)
    resolved = resolve_configs(specs, files=[str(f) for f in config_files], overrides=list(overrides),
                               data_root=data_root)
    cache = cache_root()
    validate.check_configs(resolved)
    validate.check_weights(resolved, cache)
    runs = plan_runs(resolved, progress=progress)
    stages = topological([r.target for r in runs])
    validate.check_data(stages, cache, progress=progress)
    fingerprints.flush()  # remember the weights files' hashes only once the request is valid
    return Plan(runs, stages, cache)


def run(methods: Sequence[str] | None, dataset: str | None, *, backbone: str | None = None,
        seeds: Sequence[int] = (0,), overrides: Sequence[str] = (), config_files: Sequence[str | Path] = (),
        data_root: str | None = None, out: str | Path | None = None, executor: str = "inline",
        ray_address: str | None = None, table: int | None = None, progress: bool = False) -> pd.DataFrame:
    """Plan, execute and collect: one row per run (the :func:`~ltrbench.results.load_results` frame).

    With ``out`` every run's result JSON is also written to ``<out>/runs/`` (the folder is checked
    for writing before any work, and created only when the results are written). ``executor="ray"``
    (implied by ``ray_address``) runs the stages as Ray tasks. ``df.attrs["execution"]`` holds the
    counts of stages needed and executed and the wall time; ``df.attrs["records"]`` the full result
    records (per-class accuracy, config, images replaced under ``data.allow_corrupt`` …).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"Unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}.")
    if out is not None:
        validate.check_output(Path(out))
    p = plan(methods, dataset, backbone=backbone, seeds=seeds, overrides=overrides, config_files=config_files,
             data_root=data_root, table=table, progress=progress)
    t0 = time.time()
    infos = execute(p.targets, p.cache, executor="ray" if ray_address else executor, progress=progress,
                    ray_address=ray_address)
    records = [build_record(r, infos, p.cache) for r in p.runs]
    if out is not None:
        for rec in records:
            write_result(Path(out), rec)
    df = load_results(records)
    executed = sum(bool(i["ran"]) for i in infos.values())
    df.attrs["execution"] = {"stages": len(infos), "executed": executed, "cached": len(infos) - executed,
                             "seconds": round(time.time() - t0, 1)}
    df.attrs["records"] = records
    return df
