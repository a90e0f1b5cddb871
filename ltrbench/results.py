"""Results as files: the result record of a run, one immutable JSON per evaluated run, and the
tidy table over all of them.

:func:`build_record` owns the schema of a record (:data:`REQUIRED_KEYS` and the rest). A result is
written once, atomically (temp file + rename), at
``<out>/runs/<method>__<dataset>__<backbone>__seed<k>__<evaluate key>.json``; an existing file
with the same name is the same run and is left alone. :func:`load_results` flattens records (a
folder of them, or a list) into one pandas DataFrame, one row per run: the paper convention's
overall/many/medium/few and the other metrics of :data:`ltrbench.metrics.METRIC_NAMES`, the
decoupling convention's bucket metrics as ``decoupling_many`` etc., and each metric's bootstrap
interval as ``<column>_lo`` / ``<column>_hi``. A record written before a metric or interval was
recorded reads as before, with that column NaN (missing, never 0).

:func:`scan_results` is the one reader of a results folder, for every command: it skips hidden
and temporary files and leaves out, by name and with why, every file it cannot read as a record.
Result files are written through :mod:`ltrbench.safeio` (never through a planted link; mode from
the umask, so collaborators sharing ``--out`` can read them).
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import pandas as pd

from .metrics import BUCKET_METRICS, CONVENTIONS, METRIC_NAMES
from .safeio import real_dir, refuse_link, write_atomic
from .version import __version__

REQUIRED_KEYS = ("method", "dataset", "backbone", "seed", "metrics", "per_class_accuracy", "train_counts",
                 "config", "wall_time_s", "git_revision", "versions", "device")


def git_revision() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "torchvision", "open_clip", "timm", "numpy", "pandas", "ray"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except ImportError:
                continue
        out[mod] = getattr(m, "__version__", "?")
    out["ltrbench"] = __version__
    return out


def run_device(stages: Sequence[Mapping[str, Any]]) -> str:
    """The devices that computed a run, from its stages' records (in stage order, each once).

    Stages cached by a version that did not record devices leave it to this machine's description,
    marked as such."""
    seen = list(dict.fromkeys(s["device"] for s in stages if s.get("device")))
    if seen:
        return " + ".join(seen)
    from .devices import machine  # torch: only a run with unrecorded devices needs it

    return f"unrecorded (stages cached before devices were recorded; driver: {machine()})"


def result_filename(rec: Mapping[str, Any]) -> str:
    variant = f"-{rec['variant']}" if rec.get("variant") else ""
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))  # noqa: E731
    return (f"{safe(rec['method'] + variant)}__{safe(rec['dataset'])}__{safe(rec['backbone'])}"
            f"__seed{rec['seed']}__{rec['run_key']}.json")


def write_result(out: Path, rec: Mapping[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise ValueError(f"result record lacks {missing}")
    path = Path(out) / "runs" / result_filename(rec)
    real_dir(path.parent, Path(out), "the results folder", create=True)
    refuse_link(path, "the result file")
    if path.exists():
        return path
    write_atomic(path, json.dumps(rec, indent=1, sort_keys=True, default=str), "the result file")
    return path


class Skipped(NamedTuple):
    """A file of a results folder that is not a result ltrbench can read, and why."""

    path: Path
    why: str

    def line(self) -> str:
        return f"skipped {self.path}: {self.why}"


class ResultScan(NamedTuple):
    """What :func:`scan_results` found: the records, and the files left out."""

    records: list[dict[str, Any]]
    skipped: list[Skipped]


def runs_folder(folder: Path) -> Path:
    """``<folder>/runs`` when there is one, else ``folder`` itself (a folder of result JSONs)."""
    return Path(folder) / "runs" if (Path(folder) / "runs").is_dir() else Path(folder)


def _number(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def record_problem(rec: Any) -> str | None:
    """Why ``rec`` (a parsed JSON document) is not a result record; None when it is one."""
    if not isinstance(rec, dict):
        return f"it holds a JSON {type(rec).__name__}, not a result record (an object)"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        return f"it is not an ltrbench result (no {', '.join(missing[:4])}{' …' if len(missing) > 4 else ''})"
    for k in ("method", "dataset", "backbone"):
        if not isinstance(rec[k], str):
            return f"its {k} is not a string"
    if rec.get("variant") is not None and not isinstance(rec["variant"], str):
        return "its variant is not a string"
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        return "its seed is not an integer"
    if not isinstance(rec["metrics"], dict) or not all(
            isinstance(v, dict) and all(_number(x) for x in v.values()) for v in rec["metrics"].values()):
        return "its metrics are not a mapping of conventions to numbers"
    for k in ("per_class_accuracy", "train_counts"):
        if not isinstance(rec[k], list) or not all(_number(x) for x in rec[k]):
            return f"its {k} is not a list of numbers"
    if not isinstance(rec.get("stages", []), list):
        return "its stages are not a list"
    return None


def scan_results(folder: Path) -> ResultScan:
    """Every result record of a results folder (:func:`runs_folder`), in file-name order.

    The one reader of result files (``tables``, ``diff``, ``report``, ``sweep``): hidden files (an
    interrupted write's ``.tmp-*``) and links are not looked at; a file that cannot be read as a
    result record (truncated, empty, not JSON, another program's JSON, nested too deep) is left out
    and listed in ``skipped`` with why, so the command goes on and can say so.
    """
    runs = runs_folder(folder)
    records, skipped = [], []
    for p in sorted(runs.glob("*.json")):
        if p.name.startswith("."):
            continue
        if p.is_symlink() or not p.is_file():
            skipped.append(Skipped(p, "not a regular file (a link or a folder)"))
            continue
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            skipped.append(Skipped(p, "not UTF-8 text"))
            continue
        except RecursionError:
            skipped.append(Skipped(p, "its JSON is nested too deep"))
            continue
        except ValueError as e:
            skipped.append(Skipped(p, "empty" if not p.stat().st_size else f"not valid JSON ({e})"))
            continue
        except OSError as e:
            skipped.append(Skipped(p, f"cannot be read ({e.strerror or e})"))
            continue
        problem = record_problem(rec)
        if problem:
            skipped.append(Skipped(p, problem))
        else:
            records.append(rec)
    return ResultScan(records, skipped)


def read_results(folder: Path) -> list[dict[str, Any]]:
    """The records of :func:`scan_results` (files it cannot read are left out)."""
    return scan_results(folder).records


def build_record(run: Any, infos: Mapping[str, Mapping[str, Any]], cache: Path) -> dict[str, Any]:
    """The result record of one planned run (a :class:`ltrbench.planner.PlannedRun`) whose stages have
    finished (``infos``: key → stage.json).

    The evaluate stage's ``result.json`` gives the metrics; the rest is provenance: the resolved
    config, the effective lr and batch size of every training stage, the stages with their times,
    the images replaced under ``data.allow_corrupt`` (``replaced_images``: path, label, the image
    read instead, why), versions, git revision and device.
    """
    from .stages import artifact_dir  # the engine (torch), which a reader of results never needs

    res = json.loads((artifact_dir(cache, run.target) / "result.json").read_text())
    stages = run.stages
    replaced = {r["path"]: r for s in stages for r in infos[s.key].get("replaced_images", [])}
    effective = {s.label or s.kind: {"effective_lr": infos[s.key]["effective_lr"],
                                     "effective_batch_size": infos[s.key]["effective_batch_size"]}
                 for s in stages if infos[s.key].get("effective_lr") is not None}
    return {
        "method": run.spec.method,
        "variant": run.spec.variant,
        "dataset": run.spec.dataset,
        "backbone": run.cfg.backbone.name,
        "pretrained": run.cfg.backbone.pretrained,
        "seed": run.spec.seed,
        "metrics": res["metrics"],
        "rules": res.get("rules", {}),
        "primary_rule": res.get("primary_rule"),
        "bucket_rule": res.get("bucket_rule"),
        "per_class_accuracy": res["per_class_accuracy"],
        # since evaluate v2: intervals, per-image predictions, SADE's shifted test distributions;
        # since v3: what the scores are (score_kind, read by nll, ece and the oracle) and the prior
        # they are calibrated to (score_prior, which the oracle corrects from)
        **{k: res[k] for k in ("intervals", "interval_method", "predictions", "shifted",
                               "shifted_oracle_per_class", "score_kind", "score_prior", "rule_kinds") if k in res},
        "train_counts": res["train_counts"],
        "eval_split": res["eval_split"],
        "num_eval": res["num_eval"],
        "info": res.get("info", {}),
        # the trainable and added (head, PEFT modules) parameter counts of each training stage that records them
        "params": {s.label or s.kind: infos[s.key]["params"] for s in stages if infos[s.key].get("params")},
        # data.allow_corrupt: every unreadable image a stage of this run replaced (by one of its class)
        "replaced_images": [replaced[p] for p in sorted(replaced)],
        "config": run.cfg.to_dict(),
        "overrides": list(run.spec.overrides),
        "effective": effective,
        "stages": [{"kind": s.kind, "key": s.key, "label": s.label, "elapsed_s": infos[s.key]["elapsed_s"],
                    **{k: infos[s.key][k] for k in ("host", "node", "device") if infos[s.key].get(k) is not None}}
                   for s in stages],
        "run_key": run.target.key,
        "wall_time_s": round(sum(infos[s.key]["elapsed_s"] for s in stages), 2),
        "git_revision": git_revision(),
        "versions": versions(),
        "device": run_device([infos[s.key] for s in stages]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def metric_columns(convention: str = "paper") -> dict[str, str]:
    """Metric name (:data:`~ltrbench.metrics.METRIC_NAMES`) → column of the :func:`load_results`
    frame under a shot convention (a convention's bucket metrics are prefixed, but the paper's)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown shot convention {convention!r}; use one of {sorted(CONVENTIONS)}")
    prefix = "" if convention == "paper" else f"{convention}_"
    return {m: (f"{prefix}{m}" if m in BUCKET_METRICS else m) for m in METRIC_NAMES}


_METRIC_COLS = tuple(dict.fromkeys(c for conv in CONVENTIONS for c in metric_columns(conv).values()))
#: The columns of :func:`load_results`, in order.
RESULT_COLUMNS = ("method", "variant", "dataset", "backbone", "seed", "eval_split", *_METRIC_COLS,
                  *(f"{c}_{s}" for c in _METRIC_COLS for s in ("lo", "hi")), "run_key", "wall_time_s")


def _metric_row(metrics: Mapping[str, Mapping[str, float | None]],
                intervals: Mapping[str, Mapping[str, Sequence[float] | None]] | None = None) -> dict[str, float | None]:
    row: dict[str, float | None] = {}
    for conv in CONVENTIONS:
        for name, col in metric_columns(conv).items():
            if row.get(col) is not None:  # a metric of no convention: the first convention's
                continue
            row[col] = metrics.get(conv, {}).get(name)
            iv = ((intervals or {}).get(conv) or {}).get(name)
            row[f"{col}_lo"], row[f"{col}_hi"] = (iv[0], iv[1]) if iv else (None, None)
    return row


def load_results(folder: Path | Iterable[Mapping[str, Any]], *, rules: bool = False) -> pd.DataFrame:
    """One tidy row per run (:data:`RESULT_COLUMNS`; an empty shot bucket is NaN, never 0).

    ``rules=True`` gives one row per (run, inference rule) instead, with a ``rule`` column:
    ``primary`` (the run's result) and every rule the method recorded (VL-LTR: each fusion rule
    and each branch alone).
    """
    scan = scan_results(Path(folder)) if isinstance(folder, (str, Path)) else ResultScan(list(folder), [])
    recs = scan.records
    rows = []
    for r in recs:
        base = {"method": r["method"], "variant": r.get("variant", ""), "dataset": r["dataset"],
                "backbone": r["backbone"], "seed": r["seed"], "eval_split": r.get("eval_split"),
                "run_key": r.get("run_key"), "wall_time_s": r.get("wall_time_s")}
        variants = {"primary": (r["metrics"], r.get("intervals"))}
        if rules:
            variants.update({name: (m, None) for name, m in (r.get("rules") or {}).items()})
        for rule, (metrics, intervals) in variants.items():
            rows.append({**base, **_metric_row(metrics, intervals), **({"rule": rule} if rules else {})})
    cols = [*RESULT_COLUMNS, *(("rule",) if rules else ())]
    df = pd.DataFrame(rows, columns=cols)
    numeric = [c for c in cols if c in _METRIC_COLS or c[:-3] in _METRIC_COLS]
    df[numeric] = df[numeric].astype(float)
    return df
