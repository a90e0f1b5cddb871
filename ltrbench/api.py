"""The library API: :func:`plan` (the de-duplicated stage DAG of a request) and :func:`run` (plan,
execute, collect one tidy row per run). The CLI, the bench scripts and the tests all go through
these two functions.

    import ltrbench
    df = ltrbench.run(["baseline", "zeroshot"], "synthetic_lt", seeds=[0, 1])
    df[["method", "seed", "overall", "few"]]

A stage that keeps failing fails only the runs that need it; :func:`run` returns (or, by default,
raises with) the completed runs and a summary of the failed ones.

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
from .errors import ConfigError, RunFailedError
from .execute import EXECUTORS, StageFailure, execute
from .paths import cache_root
from .plan import PlannedRun, RunSpec, plan_runs, resolve_configs
from .registry import DATASETS, METHODS
from .results import build_record, load_results, write_result
from .stages import Stage, is_done, topological
from .tables import any_table, table_runs

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
           table: int | str | None) -> list[RunSpec]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("No seed given; pass at least one, e.g. seeds=[0] (--seeds 0).")
    if table is not None:
        if methods is not None:
            raise ConfigError("A paper table fixes its methods: pass either methods or table, not both.")
        specs = table_runs(any_table(table), seeds, dataset, backbone)
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
         data_root: str | None = None, table: int | str | None = None, progress: bool = False) -> Plan:
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
    if data_root:  # absolute: a Ray worker may run in another folder (the shipped code's)
        data_root = str(Path(data_root).expanduser().absolute())
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
        ray_address: str | None = None, table: int | str | None = None, progress: bool = False, retries: int = 2,
        device: str = "auto", ship_code: bool = True, cpus_per_stage: int | None = None,
        raise_on_failure: bool = True) -> pd.DataFrame:
    """Plan, execute and collect: one row per run (the :func:`~ltrbench.results.load_results` frame).

    With ``out`` every run's result JSON is also written to ``<out>/runs/`` (the folder is checked
    for writing before any work, and created only when the results are written). ``executor="ray"`` (implied by ``ray_address``) runs the stages
    as Ray tasks: on an embedded local Ray, or on the cluster at ``ray_address``. ``retries``: more
    attempts for a failing stage; ``device``: ``auto``, ``cpu`` (everywhere) or ``cuda``;
    ``ship_code``: send this code to the Ray workers; ``cpus_per_stage``: CPUs per Ray task (default:
    the stage's loader workers + 1). See :mod:`ltrbench.execute`.

    A stage that fails on every attempt fails only the runs that need it: every other run completes
    (and is written to ``out``). ``df.attrs["failures"]`` lists the failed runs (method, variant,
    dataset, backbone, seed, stage kind, label, key, error, log, worker_log, attempts); with
    ``raise_on_failure`` (the default) a failure then raises :class:`~ltrbench.errors.RunFailedError`,
    whose ``frame`` is the frame of the runs that completed and whose message is the summary (the CLI
    prints it and exits 1). ``df.attrs["execution"]`` holds the counts of stages needed, executed and
    failed and the wall time; ``df.attrs["records"]`` the full result records (per-class accuracy,
    config, images replaced under ``data.allow_corrupt`` …).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"Unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}.")
    if out is not None:
        validate.check_output(Path(out))
    p = plan(methods, dataset, backbone=backbone, seeds=seeds, overrides=overrides, config_files=config_files,
             data_root=data_root, table=table, progress=progress)
    t0 = time.time()
    ex = execute(p.targets, p.cache, executor="ray" if ray_address else executor, progress=progress,
                 ray_address=ray_address, retries=retries, device=device, ship_code=ship_code,
                 cpus_per_stage=cpus_per_stage, out=Path(out) if out is not None else None)
    records, failures = [], []
    for r in p.runs:
        failed = ex.failure_of(r.target)
        if failed is None:
            records.append(build_record(r, ex.infos, p.cache))
        else:
            failures.append(_failure_row(r, failed))
    if out is not None:
        for rec in records:
            write_result(Path(out), rec)
    df = load_results(records)
    df.attrs["execution"] = {"stages": len(ex.stages), "executed": ex.executed, "cached": len(ex.infos) - ex.executed,
                             "failed_stages": len(ex.failures), "failed_runs": len(failures),
                             "seconds": round(time.time() - t0, 1)}
    df.attrs["records"] = records
    df.attrs["failures"] = failures
    if failures and raise_on_failure:
        raise RunFailedError(failure_summary(failures, len(p.runs), retries), frame=df, failures=failures)
    return df


def _failure_row(run: PlannedRun, f: StageFailure) -> dict:
    return {"method": run.spec.method, "variant": run.spec.variant, "dataset": run.spec.dataset,
            "backbone": run.cfg.backbone.name, "seed": run.spec.seed, "stage": f.kind, "label": f.label, "key": f.key,
            "error": f.error, "log": f.log, "worker_log": f.worker_log, "attempts": f.attempts, "where": f.where}


def failure_summary(failures: Sequence[dict], runs: int, retries: int) -> str:
    """The end summary of failed runs: a line per run (method, data set, backbone, seed, the stage that
    failed with its key, the error's last line) and where its logs are."""
    lines = [f"{len(failures)} of {runs} runs failed (a stage they need failed {retries + 1} times or with a user "
             f"error; every other run completed and its result was written):"]
    for f in failures:
        name = f["method"] + (f"[{f['variant']}]" if f.get("variant") else "")
        lines.append(f"  {name} · {f['dataset']} · {f['backbone']} · seed {f['seed']}: stage {f['stage']}"
                     f"[{f['label'] or f['key'][:8]}] key {f['key']}, {f['attempts']} attempt(s): {f['error']}")
        where = f" (worker log on {f['where']}: {f['worker_log']})" if f.get("worker_log") else ""
        lines.append(f"      log: {f['log']}{where}")
    return "\n".join(lines)
