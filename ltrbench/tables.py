"""Markdown tables from results (never typed by hand): the summary table and the paper's tables.

Both are pandas frames rendered by one function, :func:`markdown`; every cell of ours is
:func:`mean_std` over seeds. A paper table is a spec (``configs/tables/table<N>.yaml``): each row
is one run (a method plus ``--set`` overrides, on the paper's data set and backbone) with the
paper's numbers; :func:`render_table` puts ours, the paper's and the difference side by side.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
import yaml

from .config import CONFIG_DIR
from .errors import ConfigError
from .metrics import CONVENTION_NOTE
from .plan import RunSpec
from .results import metric_columns

METRICS = ("overall", "many", "medium", "few")
TABLE_DIR = CONFIG_DIR / "tables"
TOLERANCE = 1.0  # points: a difference beyond this is marked in diffs


def mean_std(values: pd.Series | Sequence[float]) -> str:
    """``m`` for one value, ``m ± s`` (sample std) for several, ``—`` for none (NaN = missing)."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def markdown(frame: pd.DataFrame) -> str:
    """The one renderer: a frame of display strings as a markdown table."""
    return frame.to_markdown(index=False, disable_numparse=True)


def summary_table(df: pd.DataFrame, convention: str = "paper") -> str:
    """Markdown: one row per (dataset, backbone, method, variant) of a :func:`load_results` frame,
    overall/many/medium/few under ``convention``, mean ± std over seeds."""
    cols = metric_columns(convention)
    rows = []
    for (dataset, backbone, method, variant), g in df.groupby(["dataset", "backbone", "method", "variant"], sort=False):
        row = {"method": method + (f" [{variant}]" if variant else ""), "dataset": dataset, "backbone": backbone,
               "seeds": str(g["seed"].nunique())}
        row.update({m: mean_std(g[cols[m]]) for m in METRICS})
        rows.append(row)
    return markdown(pd.DataFrame(rows, columns=["method", "dataset", "backbone", "seeds", *METRICS]))


# --------------------------------------------------------------------------- paper table specs


@dataclass(frozen=True)
class TableRow:
    index: int
    row: str
    method: str
    dataset: str | None
    backbone: str | None
    overrides: tuple[str, ...]
    paper: Mapping[str, float]


@dataclass(frozen=True)
class TableSpec:
    """A paper table as runs: each row is one (method, dataset, backbone, overrides) with its paper numbers."""

    number: int
    title: str
    rows: tuple[TableRow, ...]
    source: Path = field(default=Path())

    def variant(self, row: TableRow) -> str:
        return f"t{self.number}r{row.index}"


def available_tables() -> list[int]:
    return sorted(int(p.stem[5:]) for p in TABLE_DIR.glob("table*.yaml"))


def load_table(number: int, folder: Path = TABLE_DIR) -> TableSpec:
    path = folder / f"table{number}.yaml"
    if not path.is_file():
        raise ConfigError(f"No table spec for table {number}; available: {', '.join(map(str, available_tables()))}.")
    doc = yaml.safe_load(path.read_text())
    rows = []
    for i, r in enumerate(doc["rows"], 1):
        rows.append(TableRow(i, r["row"], r["method"], r.get("dataset", doc.get("dataset")),
                             r.get("backbone", doc.get("backbone")), tuple(r.get("set", ())), r.get("paper", {})))
    return TableSpec(int(doc["table"]), doc["title"], tuple(rows), path)


def table_runs(spec: TableSpec, seeds: Sequence[int], dataset: str | None = None,
               backbone: str | None = None) -> list[RunSpec]:
    """The RunSpecs of a table. ``dataset`` (e.g. synthetic_lt) replaces the paper's data sets, and
    then the backbone is the data set config's unless ``backbone`` is given."""
    out = []
    for seed in seeds:
        for r in spec.rows:
            ds = dataset or r.dataset
            bb = backbone or (None if dataset else r.backbone)
            out.append(RunSpec(r.method, ds, bb, seed, spec.variant(r), r.overrides))
    return out


def render_table(spec: TableSpec, df: pd.DataFrame, convention: str = "paper") -> str:
    """Ours (mean ± std over seeds), the paper's number and ours − paper for every row and metric
    of a :func:`load_results` frame.

    A difference beyond ±TOLERANCE points is marked with ⚠. On another data set than the paper's
    (the built-in world) no difference is computed: only the order of rows is comparable.
    """
    cols = metric_columns(convention)
    metrics = [m for m in METRICS if any(m in r.paper for r in spec.rows)]
    rows = []
    for r in spec.rows:
        mine = df[df["variant"] == spec.variant(r)]
        ds = mine["dataset"].iloc[0] if len(mine) else (r.dataset or "—")
        same = len(mine) > 0 and ds == r.dataset
        row = {"row": r.row, "dataset": ds, "seeds": str(mine["seed"].nunique())}
        for m in metrics:
            vals = mine[cols[m]].dropna()
            paper = r.paper.get(m)
            row[f"{m} ours"] = mean_std(vals)
            row[f"{m} paper"] = "—" if paper is None else f"{paper:.1f}"
            if len(vals) and paper is not None and same:
                d = vals.mean() - paper
                row[f"{m} Δ"] = f"{d:+.1f}" + (" ⚠" if abs(d) > TOLERANCE else "")
            else:
                row[f"{m} Δ"] = "—"
        rows.append(row)
    lines = [f"### {spec.title} — ours vs paper ({CONVENTION_NOTE[convention]})", "", markdown(pd.DataFrame(rows))]
    if len(df) and not df["dataset"].isin({r.dataset for r in spec.rows}).any():
        lines += ["", f"(run on {df['dataset'].iloc[0]}: the paper's numbers are for another data set; "
                      "compare the order of rows, not the values)"]
    return "\n".join(lines) + "\n"
