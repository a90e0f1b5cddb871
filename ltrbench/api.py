"""The library API: :func:`plan` (the de-duplicated stage DAG of a request) and :func:`run` (plan,
execute, record: a :class:`RunResult`). The CLI, the bench scripts and the tests all go through
these two functions.

    import ltrbench
    res = ltrbench.run(ltrbench.Request(["baseline", "zeroshot"], "synthetic_lt", seeds=[0, 1]))
    res.frame[["method", "seed", "overall", "few"]]

A request goes one way through the core, each step in its own module: resolve
(:mod:`ltrbench.resolve`: names, runs, configurations) → validate what needs no data set
(:mod:`ltrbench.validate`: names, configurations, weights) → plan (:mod:`ltrbench.planner`: data
sets read, stages) → validate the plan against the cache, once (planted links, which stages are
cached, the data the others read) → execute what is not cached (with the ``ray`` executor,
:func:`ltrbench.cluster.connect_for` first; then :func:`ltrbench.execute.run_ordered`) → record
(:mod:`ltrbench.results`). Every check comes before any work.

A stage that keeps failing fails only the runs that need it: :func:`run` returns (or, by default,
raises with) the completed runs and a summary of the failed ones. A request is methods × seeds on
one data set (or every row of a paper table, ``table=N``), with the configuration resolved as the
CLI does (:class:`Request`); how the stages execute is :class:`ExecOptions`. Every stage is cached
under ``$LTRBENCH_CACHE`` by content, so a second call computes only what changed.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import fingerprints, validate
from .errors import RunFailedError
from .cluster import connect_for
from .execute import ExecOptions, StageFailure, run_ordered
from .paths import cache_root
from .planner import PlannedRun, plan_request
from .resolve import Request, RunSpec, resolve
from .results import build_record, load_results, write_result
from .stages import Stage, is_done

log = logging.getLogger(__name__)

__all__ = ["ExecOptions", "Plan", "Request", "RunResult", "RunSpec", "failure_summary", "plan", "run"]


@dataclass
class Plan:
    """A request resolved into runs and the stages they need (each key once, inputs first), and
    which of them were cached when it was validated (``done``)."""

    runs: list[PlannedRun]
    stages: list[Stage]
    cache: Path
    done: frozenset[str] = frozenset()  # the keys cached and verified when planned

    @property
    def targets(self) -> list[Stage]:
        """The runs' final (``evaluate``) stages."""
        return [r.target for r in self.runs]

    def to_frame(self) -> pd.DataFrame:
        """One row per stage: kind, label, key, seed, its inputs' keys, and whether it is cached."""
        return pd.DataFrame([{"kind": s.kind, "label": s.label, "key": s.key, "seed": s.seed,
                              "inputs": [i.key for i in s.inputs], "cached": is_done(self.cache, s)}
                             for s in self.stages])


@dataclass
class RunResult:
    """What :func:`run` returns: ``frame``, one tidy row per completed run
    (:func:`~ltrbench.results.load_results`); ``records``, their full result records (per-class
    accuracy, config, stages, images replaced under ``data.allow_corrupt`` …); ``failures``, a row
    per failed run (method, variant, dataset, backbone, seed, stage kind, label, key, error, log,
    worker_log, attempts, where); ``execution``, the counts of stages needed, executed, cached and
    failed, of failed runs, and the wall time (``seconds``)."""

    frame: pd.DataFrame
    records: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    execution: dict[str, Any] = field(default_factory=dict)


def check(request: Request, executor: str | None = None) -> tuple[list, Path]:
    """What :func:`plan` checks before it reads any data set (which may generate the built-in world):
    the request's names and seeds, every run's resolved configuration, the cache and data root
    folders, the weights, and (``executor="inline"``) that no stage is data-parallel. Writes
    nothing; returns the resolved ``(spec, config)`` pairs and the cache."""
    resolved = resolve(request)  # unknown names and seeds first, with "did you mean"
    cache = cache_root()
    validate.check_request(resolved, cache, methods=request.methods, seeds=request.seeds, executor=executor)
    return resolved, cache


def plan(request: Request, *, progress: bool = False, executor: str | None = None) -> Plan:
    """Resolve a request into its runs and de-duplicated stage DAG, without running anything.

    Everything is validated here, before any work (:mod:`ltrbench.validate`): names, every run's
    configuration, the weights, the data root, and the images and wiki files the stages to run
    will read. Bad input raises a :class:`~ltrbench.errors.LtrBenchError` and leaves the cache as it
    was (the built-in world is generated when its data set is first read, after the configuration
    and weights checked out). ``progress``: bars for the world's generation and the image check.
    """
    resolved, cache = check(request, executor)
    runs, stages = plan_request(resolved, progress=progress)
    done = validate.check_plan(stages, cache, progress=progress)
    fingerprints.flush()  # remember the weights files' hashes only once the request is valid
    return Plan(runs, stages, cache, done)


def run(request: Request, options: ExecOptions | None = None, *, raise_on_failure: bool = True) -> RunResult:
    """Plan, execute and record: a :class:`RunResult`.

    ``options`` (:class:`~ltrbench.execute.ExecOptions`; default: inline, no progress lines): the
    executor (``ray``, implied by an ``address``: an embedded local Ray, or the cluster at that
    address), ``retries`` (more attempts for a failing stage), ``device`` (``auto``, ``cpu``
    everywhere, ``cuda``), ``ship_code`` (send this code to the Ray workers), ``cpus_per_stage``
    (default: the stage's loader workers + 1), ``progress``, and ``out``: every run's result JSON is
    also written to ``<out>/runs/`` (the folder is checked for writing before any work, and created
    only when the results are written). See :mod:`ltrbench.execute`.

    A stage that fails on every attempt fails only the runs that need it: every other run completes
    (and is written to ``out``). With ``raise_on_failure`` (the default) a failure then raises
    :class:`~ltrbench.errors.RunFailedError`, whose ``result`` is the :class:`RunResult` and whose
    message is the summary (the CLI prints it and exits 1).
    """
    opts = (options or ExecOptions(progress=False))
    if opts.address and opts.executor == "inline":
        opts = dataclasses.replace(opts, executor="ray")
    opts = dataclasses.replace(opts, out=Path(opts.out) if opts.out is not None else None).check()
    validate.check_execution(opts)  # the Ray address (format, port, reachability) before planning writes anything
    if opts.out is not None:
        validate.check_output(opts.out)
    p = plan(request, progress=opts.progress, executor=opts.executor)  # inline: no data-parallel stage
    t0 = time.time()
    conn = None  # the ray executor's cluster, connected (and its storage probed) before any stage is submitted
    if opts.executor == "ray" and any(s.key not in p.done for s in p.stages):
        conn = connect_for(opts.address, p.cache, ship_code=opts.ship_code, out=opts.out)
    ex = run_ordered(p.stages, p.cache, p.done, opts, conn)
    records, failures = [], []
    for r in p.runs:
        failed = ex.failure_of(r.stages)
        if failed is None:
            records.append(build_record(r, ex.infos, p.cache))
        else:
            failures.append(_failure_row(r, failed))
    if opts.out is not None:
        for rec in records:
            write_result(opts.out, rec)
    execution = {"stages": len(ex.stages), "executed": ex.executed, "cached": len(ex.infos) - ex.executed,
                 "failed_stages": len(ex.failures), "failed_runs": len(failures),
                 "seconds": round(time.time() - t0, 1)}
    result = RunResult(load_results(records), records, failures, execution)
    if failures and raise_on_failure:
        raise RunFailedError(failure_summary(failures, len(p.runs), opts.retries), result=result)
    return result


def _failure_row(run: PlannedRun, f: StageFailure) -> dict:
    return {"method": run.spec.method, "variant": run.spec.variant, "dataset": run.spec.dataset,
            "backbone": run.cfg.backbone.name, "seed": run.spec.seed, "stage": f.kind, "label": f.label, "key": f.key,
            "error": f.error, "log": f.log, "worker_log": f.worker_log, "attempts": f.attempts, "where": f.where}


def failure_summary(failures: list[dict], runs: int, retries: int) -> str:
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
