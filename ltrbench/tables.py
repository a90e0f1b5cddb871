"""Markdown tables from result records (never typed by hand).

:func:`summary_table` gives one row per method (and variant): overall, many, medium, few under
one named shot convention, mean ± std over seeds where there are several.
"""
from __future__ import annotations

import pandas as pd

METRICS = ("overall", "many", "medium", "few")


def _fmt(values: pd.Series) -> str:
    v = values.dropna()
    if v.empty:
        return "—"
    if len(v) == 1:
        return f"{v.iloc[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def summary_table(df: pd.DataFrame, convention: str = "paper") -> str:
    """Markdown: one row per (dataset, backbone, method, variant) under ``convention``."""
    d = df[df["convention"] == convention]
    rows = []
    for (dataset, backbone, method, variant), g in d.groupby(["dataset", "backbone", "method", "variant"], sort=False):
        row = {"method": method + (f" [{variant}]" if variant else ""), "dataset": dataset, "backbone": backbone,
               "seeds": len(g["seed"].unique())}
        row.update({m: _fmt(g[m].astype(float)) for m in METRICS})
        rows.append(row)
    out = pd.DataFrame(rows, columns=["method", "dataset", "backbone", "seeds", *METRICS])
    return out.to_markdown(index=False, disable_numparse=True)


CONVENTION_NOTE = {
    "paper": "paper convention: many ≥ 100, few ≤ 20 training images",
    "decoupling": "decoupling convention: many > 100, few < 20 training images",
}


# --------------------------------------------------------------------------- paper table specs

import math  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Mapping, Sequence  # noqa: E402

import yaml  # noqa: E402

from .errors import ConfigError  # noqa: E402

TABLE_DIR = Path(__file__).resolve().parent.parent / "configs" / "tables"
TOLERANCE = 1.0  # points: a difference beyond this is marked in diffs


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


def table_runs(spec: TableSpec, seeds: Sequence[int], dataset: str | None = None, backbone: str | None = None):
    """The RunSpecs of a table. ``dataset`` (e.g. synthetic_lt) replaces the paper's data sets, and
    then the backbone is the data set config's unless ``backbone`` is given."""
    from .plan import RunSpec

    out = []
    for seed in seeds:
        for r in spec.rows:
            ds = dataset or r.dataset
            bb = backbone or (None if dataset else r.backbone)
            out.append(RunSpec(r.method, ds, bb, seed, spec.variant(r), r.overrides))
    return out


def render_table(spec: TableSpec, records: Sequence[Mapping[str, Any]], convention: str = "paper") -> str:
    """Ours (mean ± std over seeds), the paper's number and ours − paper for every row and metric.

    A difference beyond ±TOLERANCE points is marked with ⚠. On another data set than the paper's
    (the built-in world) no difference is computed: only the order of rows is comparable.
    """
    lines = [f"### {spec.title} — ours vs paper ({CONVENTION_NOTE[convention]})", ""]
    metrics = [m for m in METRICS if any(m in r.paper for r in spec.rows)]
    head = ["row", "dataset", "seeds"] + [c for m in metrics for c in (f"{m} ours", "paper", "Δ")]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in spec.rows:
        mine = [x for x in records if x.get("variant") == spec.variant(r)]
        ds = mine[0]["dataset"] if mine else (r.dataset or "—")
        same = bool(mine) and ds == r.dataset
        cells = [r.row, ds, str(len({x["seed"] for x in mine}))]
        for m in metrics:
            vals = [x["metrics"][convention][m] for x in mine if x["metrics"][convention].get(m) is not None]
            ours = _mean_std(vals)
            paper = r.paper.get(m)
            p = "—" if paper is None else f"{paper:.1f}"
            if vals and paper is not None and same:
                d = sum(vals) / len(vals) - paper
                flag = " ⚠" if abs(d) > TOLERANCE else ""
                cells.append(f"{ours} | {p} | {d:+.1f}{flag}")
            else:
                cells.append(f"{ours} | {p} | —")
        lines.append("| " + " | ".join(cells) + " |")
    if records and all(x["dataset"] != r.dataset for x in records for r in spec.rows):
        lines += ["", f"(run on {records[0]['dataset']}: the paper's numbers are for another data set; "
                      "compare the order of rows, not the values)"]
    return "\n".join(lines) + "\n"


def _mean_std(vals: Sequence[float]) -> str:
    if not vals:
        return "—"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.1f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.1f} ± {sd:.1f}"
