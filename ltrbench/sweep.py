"""Hyperparameter sweeps on Ray Tune: a grid (or random samples) of ``--set`` values for one method,
each trial one plan on the val split, sharing the stage cache; a ranked markdown table at the end.

Part of the execution layer (it imports Ray Tune, so the CLI imports this module only for
``sweep``). :func:`sweep` connects to Ray as a run does (:func:`ltrbench.cluster.connect_for`: the
embedded local cluster, or ``ray_address``), checks every
value on the driver before any trial starts, and runs a ``tune.Tuner`` whose trials each call
:func:`ltrbench.run` inline, one seed after the other, reporting the running mean of the chosen
metric after each seed (a trial's iterations are its seeds). So ``scheduler="asha"`` stops a
trial whose first seeds rank low in its rung, and shared stages (the world, the CLIP weights, a
CVLP model that the swept key does not touch) are built once: a trial that needs a stage another
trial is building waits for it on the stage's lock, then reads it.

A trial asks Tune for what its plan's largest stage asks (:func:`ltrbench.execute.stage_resources`):
the CPUs of its loader workers + 1, its memory estimate, a GPU where GPUs are used. Trials run on
the val split (``data.eval_split``, never test), and write their result JSONs under
``<out>/sweeps/<name>/runs/``; the table is built from those files, one row per point (and per
inference rule with ``rules=True``), mean ± std over its seeds with the 95 % t interval over seeds,
ranked by the metric (any of :data:`ltrbench.metrics.METRIC_NAMES`; lowest first for NLL and ECE), and written to
``<out>/sweeps/<name>/table.md``. Tune's own state goes to ``<out>/sweeps/<name>/`` too.
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from . import api, validate
from .cluster import connect_for, forwarded_env
from .errors import ConfigError
from .execute import ExecOptions, gpu_policy, stage_resources
from .paths import cache_root
from .metrics import LOWER_IS_BETTER, METRIC_NAMES
from .results import load_results, scan_results
from .safeio import write_atomic
from .tables import METRICS, Evidence, cell, digits_of, markdown

log = logging.getLogger(__name__)

SEARCHES = ("grid", "random")
SCHEDULERS = ("none", "asha")


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["a.b=1,2", "c=x"]`` → ``{"a.b": ["1", "2"], "c": ["x"]}`` (values stay strings: the config
    parses them, with its errors)."""
    grid: dict[str, list[str]] = {}
    for g in items:
        key, sep, values = g.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--grid {g!r}: expected KEY=V1,V2,..., e.g. --grid baseline.train.lr=0.001,0.003")
        if key.strip() in grid:
            raise ConfigError(f"--grid {key.strip()!r} is given twice; put all its values in one --grid.")
        grid[key.strip()] = vals
    if not grid:
        raise ConfigError("A sweep needs at least one --grid KEY=V1,V2,...")
    return grid


@dataclass(frozen=True)
class Search:
    """What a sweep searches: ``grid`` (``{key: [values]}``, :func:`parse_grid`), every point of it
    (``search="grid"``) or ``samples`` points drawn at random (``"random"``), ranked by ``metric`` on
    ``split`` (never test), ``scheduler="asha"`` stopping trials whose first seeds rank low, a row
    per inference rule with ``rules``; ``ci``: what the cells show beside mean ± std
    (:data:`ltrbench.tables.CI_MODES`)."""

    grid: dict[str, list[str]]
    search: str = "grid"
    samples: int = 1
    metric: str = "overall"
    split: str = "val"
    scheduler: str = "none"
    rules: bool = False
    ci: str = "seeds"


@dataclass(frozen=True)
class _TrialSpec:
    """What every trial shares (passed once through Ray's object store)."""

    method: str
    dataset: str
    backbone: str | None
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]
    config_files: tuple[str, ...]
    data_root: str | None
    out: str
    metric: str
    report: str  # the name of the reported metric, e.g. val_overall
    retries: int
    device: str
    env: dict[str, str]


def _trial(config: dict[str, Any], spec: _TrialSpec) -> None:
    """One Tune trial: the plan of one point, one seed after the other, reporting the running mean."""
    os.environ.update(spec.env)  # the driver's cache and variables, whatever this process served before
    point = [f"{k}={v}" for k, v in config.items()]
    scores: list[float] = []
    keys: list[str] = []
    errors: list[str] = []
    for i, seed in enumerate(spec.seeds):
        res = api.run(_request(spec, point, [seed]),
                      ExecOptions(retries=spec.retries, device=spec.device, progress=False, out=Path(spec.out)),
                      raise_on_failure=False)
        df = res.frame
        errors += [f["error"] for f in res.failures]
        if not df.empty:
            scores.append(float(df[spec.metric].iloc[0]))
            keys.append(str(df["run_key"].iloc[0]))
        if not scores and i == len(spec.seeds) - 1:
            raise RuntimeError(f"every seed of {' '.join(point)} failed: {errors[-1]}")
        valid = [s for s in scores if s == s]  # NaN: an empty shot bucket
        tune.report({spec.report: sum(valid) / len(valid) if valid else float("nan"), "seeds_done": i + 1,
                     "run_keys": ",".join(keys), "errors": " | ".join(errors)})


def _request(spec: _TrialSpec, point: Sequence[str], seeds: Sequence[int]) -> api.Request:
    return api.Request([spec.method], spec.dataset, spec.backbone, seeds, [*spec.overrides, *point],
                       spec.config_files, spec.data_root)


def _plans(points: list[list[str]], spec: _TrialSpec) -> list[Any]:
    """The plan of every point given (seed of the first), made on the driver: a bad key or value is
    one error here, before any trial starts, and before any is planned (planning may write the world)."""
    for point in points:
        api.check(_request(spec, point, spec.seeds))
    return [api.plan(_request(spec, point, spec.seeds[:1])) for point in points]


def _resources(plans: list[Any], opts: ExecOptions, gpus_used: bool, caps: dict[str, float] | None) -> dict[str, float]:
    """A trial's share: the most any stage of its plans asks (:func:`ltrbench.execute.stage_resources`)."""
    asks = [stage_resources(s, gpus_used=gpus_used, cpus_per_stage=opts.cpus_per_stage, caps=caps)
            for p in plans for s in p.stages]
    return {"cpu": max(a["num_cpus"] for a in asks), "gpu": 1.0 if any(a["num_gpus"] > 0 for a in asks) else 0.0,
            "memory": float(max(a["memory"] for a in asks))}


def sweep(request: api.Request, search: Search, options: ExecOptions | None = None) -> tuple[pd.DataFrame, Path]:
    """Run the sweep of ``request``'s one method on its data set (its seeds: every trial's) over
    ``search``; ``options``: where stages run (Ray, always: ``address`` joins a cluster; ``out``, the
    results folder, default ``results``). Return the ranked table (a frame of display strings) and
    where it was written."""
    if request.methods is None or len(request.methods) != 1 or request.table is not None or not request.dataset:
        raise ConfigError("A sweep is of one method on one data set: pass Request([method], dataset, ...).")
    method, dataset, seeds = request.methods[0], request.dataset, request.seeds
    grid, samples, metric, split, scheduler = search.grid, search.samples, search.metric, search.split, search.scheduler
    rules, ci = search.rules, search.ci
    options = options or ExecOptions("ray")
    ray_address, retries, device = options.address, options.retries, options.device
    ship_code, cpus_per_stage, progress = options.ship_code, options.cpus_per_stage, options.progress
    out = options.out if options.out is not None else Path("results")
    search = search.search
    if search not in SEARCHES:
        raise ConfigError(f"Unknown search {search!r}; use one of {', '.join(SEARCHES)}.")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"Unknown scheduler {scheduler!r}; use one of {', '.join(SCHEDULERS)}.")
    if metric not in METRIC_NAMES:
        raise ConfigError(f"Unknown metric {metric!r}; use one of {', '.join(METRIC_NAMES)}.")
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}.")
    name = f"{method}__{dataset}__{time.strftime('%Y%m%d-%H%M%S')}"
    root = Path(out).expanduser().absolute() / "sweeps" / name
    cache = cache_root()
    opts = ExecOptions("ray", ray_address, retries, device, ship_code, cpus_per_stage, progress, root).check()
    validate.check_names([method], list(seeds))  # every trial runs every seed: one check here
    validate.check_execution(opts)  # the Ray address (format, port, reachability) before any plan
    validate.check_output(root)
    if split == "test":
        log.warning("sweep --split test: the trials are ranked on the test split, so the chosen point is tuned on "
                    "the numbers a paper reports; use --split val (the default) to choose a recipe")
    spec = _TrialSpec(method, dataset, request.backbone, tuple(int(x) for x in seeds),
                      (*request.overrides, f"data.eval_split={split}"), tuple(request.config_files), request.data_root,
                      str(root), metric, f"{split}_{metric}", retries, device, forwarded_env(cache))
    points = [list(c) for c in itertools.product(*[[f"{k}={v}" for v in vs] for k, vs in grid.items()])]
    # every point of the grid is planned here (random samples are drawn from these same points)
    plans = _plans(points, spec)
    conn = connect_for(ray_address, cache, ship_code=ship_code, out=root)
    if progress:
        print(conn.notes[0], flush=True)
    gpus_used, caps = gpu_policy(conn, opts)
    res = _resources(plans, opts, gpus_used, caps)
    if scheduler == "asha" and len(spec.seeds) == 1:
        log.warning("--scheduler asha stops trials between seeds; with one seed it stops none")
    if progress:
        trials = len(points) if search == "grid" else samples
        print(f"Tune: {trials} trial(s) of {method} on {dataset} ({split} split, seeds "
              f"{','.join(map(str, spec.seeds))}), each asking {res['cpu']:g} CPU, {res['gpu']:g} GPU, "
              f"{res['memory'] / 2**30:.1f} GiB; state and results in {root}", flush=True)
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, spec=spec), res),
        param_space={k: (tune.grid_search(vs) if search == "grid" else tune.choice(vs)) for k, vs in grid.items()},
        tune_config=tune.TuneConfig(
            metric=spec.report, mode="min" if metric in LOWER_IS_BETTER else "max", num_samples=1 if search == "grid" else samples, reuse_actors=True,
            scheduler=ASHAScheduler(max_t=len(spec.seeds), grace_period=1, reduction_factor=2)
            if scheduler == "asha" else None),
        run_config=tune.RunConfig(name=name, storage_path=str(root.parent), verbose=0,
                                  callbacks=[_Lines(spec.report)] if progress else None),
    )
    table = _table(tuner.fit(), grid, spec, rules, ci)
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "table.md", markdown(table) + "\n", "the sweep's table")
    return table, root / "table.md"


def _table(results, grid: dict[str, list[str]], spec: _TrialSpec, rules: bool, ci: str = "seeds") -> pd.DataFrame:
    """One row per trial (and rule), mean ± std over its seeds from its result files (with the
    interval ``ci`` names; a rule's cells never a bootstrap one: only the primary result stores its
    predictions), best first."""
    scan = scan_results(Path(spec.out) / "runs")  # the trials' result files only, never Tune's own state
    for s in scan.skipped:
        print(s.line(), file=sys.stderr)
    recs = {r["run_key"]: r for r in scan.records}
    evidence = Evidence(list(recs.values())) if ci == "bootstrap" else None
    shown = [*METRICS, *([spec.metric] if spec.metric not in METRICS else [])]
    sign = -1.0 if spec.metric in LOWER_IS_BETTER else 1.0
    rows = []
    for res in results:
        m = res.metrics or {}
        keys = [k for k in str(m.get("run_keys", "")).split(",") if k]
        base = {k: str(res.config.get(k)) for k in grid}
        done = int(m.get("seeds_done", 0))
        status = "ok" if done == len(spec.seeds) else f"stopped after {done} of {len(spec.seeds)} seeds"
        if res.error is not None:
            status = "failed: " + str(res.error).strip().splitlines()[-1][:160]
        elif m.get("errors"):
            status += f"; failed seeds: {m['errors'][:160]}"
        frame = load_results([recs[k] for k in keys if k in recs], rules=rules)
        if not rules:
            frame["rule"] = "primary"
        if frame.empty:
            rows.append({**base, "rule": "—", "seeds": "0", "_score": float("-inf"), "status": status,
                         **{mm: "—" for mm in shown}})
            continue
        for rule, g in frame.groupby("rule", sort=False):
            score = g[spec.metric].mean()
            rows.append({**base, "rule": rule, "seeds": str(g["seed"].nunique()),
                         "_score": float("-inf") if pd.isna(score) else sign * score, "status": status,
                         **{mm: cell(g[mm], ci, _pooled(evidence, g, mm, rule), digits_of(mm)) for mm in shown}})
    df = pd.DataFrame(rows).sort_values("_score", ascending=False, kind="stable").drop(columns="_score")
    df.insert(0, "rank", [str(i + 1) for i in range(len(df))])
    df = df.rename(columns={mm: f"{spec.report.split('_')[0]} {mm}" for mm in shown})
    return df if rules else df.drop(columns="rule")


def _pooled(evidence: Evidence | None, g: pd.DataFrame, metric: str, rule: str):
    if evidence is None or rule != "primary":
        return None
    return evidence.pooled(list(g["run_key"]), "paper", metric)


class _Lines(Callback):
    """A Tune callback printing a line per trial result and end (the driver prints; trials do not)."""

    def __init__(self, report: str) -> None:
        self.report = report

    def on_trial_result(self, iteration, trials, trial, result, **info):
        point = " ".join(f"{k}={v}" for k, v in trial.config.items())
        print(f"· trial {trial.trial_id} {point}: {result.get('seeds_done')} seed(s) done, "
              f"{self.report} {result.get(self.report, float('nan')):.1f}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        print(f"✓ trial {trial.trial_id} finished", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"✗ trial {trial.trial_id} failed (its status in the table says why)", flush=True)
