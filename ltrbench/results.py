"""Results as files: one immutable JSON per evaluated run, and the tidy table over all of them.

A result is written once, atomically (temp file + rename), at
``<out>/runs/<method>__<dataset>__<backbone>__seed<k>__<evaluate key>.json``; an existing file
with the same name is the same run and is left alone. :func:`load_results` flattens a folder of
them into one pandas DataFrame, one row per (run, convention).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from .errors import LtrBenchError

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
    from . import __version__

    out["ltrbench"] = __version__
    return out


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def result_filename(rec: Mapping[str, Any]) -> str:
    variant = f"-{rec['variant']}" if rec.get("variant") else ""
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "-" for c in str(s))  # noqa: E731
    return (f"{safe(rec['method'] + variant)}__{safe(rec['dataset'])}__{safe(rec['backbone'])}"
            f"__seed{rec['seed']}__{rec['run_key']}.json")


def check_writable(out: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out / "runs", prefix=".probe-"):
            pass
    except OSError as e:
        raise LtrBenchError(
            f"Output folder {out} cannot be written ({e.strerror or e}). Pass --out DIR with a writable folder."
        ) from None


def write_result(out: Path, rec: Mapping[str, Any]) -> Path:
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise ValueError(f"result record lacks {missing}")
    path = Path(out) / "runs" / result_filename(rec)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)
    return path


def read_results(folder: Path) -> list[dict[str, Any]]:
    runs = Path(folder) / "runs" if (Path(folder) / "runs").is_dir() else Path(folder)
    return [json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))]


def load_results(folder: Path | Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One tidy row per (run, shot convention): method, variant, dataset, backbone, seed, convention,
    overall, many, medium, few, plus the run key and wall time."""
    recs = read_results(folder) if isinstance(folder, (str, Path)) else list(folder)
    rows = []
    for r in recs:
        for conv, m in r["metrics"].items():
            rows.append({
                "method": r["method"], "variant": r.get("variant", ""), "dataset": r["dataset"],
                "backbone": r["backbone"], "seed": r["seed"], "convention": conv,
                "overall": m.get("overall"), "many": m.get("many"), "medium": m.get("medium"), "few": m.get("few"),
                "run_key": r.get("run_key"), "wall_time_s": r.get("wall_time_s"),
            })
    cols = ["method", "variant", "dataset", "backbone", "seed", "convention", "overall", "many", "medium", "few",
            "run_key", "wall_time_s"]
    return pd.DataFrame(rows, columns=cols)
