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
