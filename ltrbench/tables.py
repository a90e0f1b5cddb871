"""Markdown tables from results (never typed by hand): the summary table, the paper's whole tables
and the diff against the paper's numbers.

The paper's numbers live once, with their provenance, in ``results/paper_numbers.csv`` (one line
per printed number: :data:`PAPER_COLUMNS`). A table spec (``configs/tables/table<N>.yaml``) says
only how ltrbench runs the paper's own rows (``runs``: the printed row number, a method, a backbone,
``--set`` overrides); :func:`load_table` joins the two into a :class:`TableSpec` holding every
printed row, the ones the paper cites from other papers included.

Three renderings, all through the one renderer :func:`markdown`, every cell of ours
:func:`mean_std` over seeds:

* :func:`summary_table`: one row per method of a results folder.
* :func:`render_table`: a paper table as printed, ours beside it, and ours − paper (Δ) only where
  both were measured the same way: on the paper's data set, and for many/medium/few under the same
  shot convention (overall accuracy has none). A number under the other convention is shown with
  ``†`` and not compared.
* :func:`diff_frame` / :func:`render_diff`: every number of the paper's own rows against ours, with
  a status (within or outside the tolerance, missing); on a data set without paper numbers (the
  built-in world) :func:`order_comparison` compares only the order of the rows (Kendall's τ and the
  pairs that flip).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml

from .config import CONFIG_DIR
from .errors import ConfigError
from .metrics import (CONVENTION_NOTE, CONVENTIONS, LOWER_IS_BETTER, METRIC_NAMES, SHIFTS, Predictions, shift_name,
                      shifted)
from .results import load_results, metric_columns
from .vocab import CI_MODES, STRICT_RULES, TOLERANCE
from .stats import holm, paired, pooled_intervals, t_interval

METRICS = ("overall", "many", "medium", "few")
TABLE_DIR = CONFIG_DIR / "tables"


def _paper_numbers() -> Path:
    """``results/paper_numbers.csv``: beside the package in a checkout or an editable install, inside it
    (ltrbench/paper/, mapped by pyproject) in a wheel.

    The checkout's path when neither exists: only reading the paper's numbers then fails
    (:func:`load_paper_numbers`), never an import (a Ray worker's shipped code, a copied tree)."""
    pkg = Path(__file__).resolve().parent
    for cand in (pkg / "paper" / "paper_numbers.csv", pkg.parent / "results" / "paper_numbers.csv"):
        if cand.is_file():
            return cand
    return pkg.parent / "results" / "paper_numbers.csv"


PAPER_NUMBERS = _paper_numbers()
#: The columns of results/paper_numbers.csv: one line per number the paper prints.
PAPER_COLUMNS = (
    "table",  # the paper's table number
    "row",  # the row's number as printed (top to bottom; Table 4's "#")
    "label",  # the method (or setting) as printed
    "backbone",  # as printed: R-50* / ViT-B* are CLIP-initialised, "-" where the paper gives none
    "dataset",  # ltrbench's name of the data set
    "input_size",  # image side in pixels
    "split",  # test (ImageNet-LT, Places-LT) or val (iNaturalist 2018)
    "metric",  # overall | many | medium | few
    "value",  # top-1 accuracy, %
    "convention",  # shot convention of many/medium/few (metrics.CONVENTIONS); empty for overall
    "provenance",  # run (the paper's own run) | cited (quoted from another paper)
    "ref",  # the citation as printed, e.g. [21]
    "source",  # the cited paper (cited rows)
    "note",  # assumptions and caveats
)
MISSING = "—"
OTHER_CONVENTION = "†"


def digits_of(metric: str) -> int:
    """Decimals a metric is shown with: NLL (nats) 3, the percentages 1."""
    return 3 if metric == "nll" else 1


def mean_std(values: pd.Series | Sequence[float], digits: int = 1) -> str:
    """``m`` for one value, ``m ± s`` (sample std) for several, ``—`` for none (NaN = missing)."""
    v = pd.Series(values, dtype=float).dropna()
    if v.empty:
        return MISSING
    if len(v) == 1:
        return f"{v.iloc[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


#: What ``--ci`` shows beside mean ± std: nothing, the t interval over seeds, or the pooled bootstrap.
CI_NOTE = {
    "none": "mean ± sample std over seeds",
    "seeds": "mean ± sample std over seeds [95 % t interval over seeds, clipped to 0–100 for percentages; none "
             "with one seed]",
    "bootstrap": "mean ± sample std over seeds [95 % bootstrap interval of the mean over seeds: test images "
                 "resampled within each class, the seeds paired]",
}


def cell(values: pd.Series | Sequence[float], ci: str = "seeds", interval: Sequence[float] | None = None,
         digits: int = 1) -> str:
    """A table cell of ours: :func:`mean_std`, and with ``ci="seeds"`` the t interval over seeds
    (:func:`ltrbench.stats.t_interval`), with ``ci="bootstrap"`` the given ``interval``, as ``[lo, hi]``."""
    if ci not in CI_MODES:
        raise ConfigError(f"Unknown --ci {ci!r}; use one of {', '.join(CI_MODES)}.")
    base = mean_std(values, digits)
    if ci == "none" or base == MISSING:
        return base
    if ci == "seeds":

        interval = t_interval(pd.Series(values, dtype=float).dropna())
        if digits == 1:  # a percentage: the t interval's ends are clipped to [0, 100]
            interval = (max(interval[0], 0.0), min(interval[1], 100.0))
    if interval is None or any(pd.isna(x) for x in interval):
        return base
    return f"{base} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


class Evidence:
    """The per-image predictions of the runs of a results folder (by run key): what bootstrap
    intervals over seeds and paired comparisons resample (:mod:`ltrbench.stats`). A run whose record
    has no predictions (written before they were stored) gives no interval and no comparison."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:

        self.records = {r.get("run_key"): r for r in records}
        self.preds = {k: Predictions.from_record(r) for k, r in self.records.items()}
        self._pooled: dict[tuple, Any] = {}
        self._paired: dict[tuple, Any] = {}

    def _runs(self, keys: Sequence[str]) -> list | None:
        runs = [self.preds.get(k) for k in keys]
        return None if not runs or any(r is None for r in runs) else runs

    def pooled(self, keys: Sequence[str], convention: str, metric: str) -> tuple[float, float] | None:
        """The bootstrap interval of the mean over these runs (seeds) of ``metric``; one run: its own
        record's interval."""
        keys = tuple(keys)
        if len(keys) == 1 and (self.records[keys[0]].get("intervals") or {}).get(convention, {}).get(metric):
            return tuple(self.records[keys[0]]["intervals"][convention][metric])
        if keys not in self._pooled:

            runs = self._runs(keys)
            self._pooled[keys] = pooled_intervals(runs) if runs else None
        got = self._pooled[keys]
        iv = got[convention][metric] if got else None
        return tuple(iv) if iv else None

    def paired(self, a: pd.DataFrame, b: pd.DataFrame, convention: str, metrics: Sequence[str]):
        """:func:`ltrbench.stats.paired` of the runs of frame rows ``a`` against ``b`` over the seeds
        both have (None when they share no seed or a run has no predictions)."""
        seeds = sorted(set(a["seed"]) & set(b["seed"]))
        if not seeds:
            return None
        ka = [a.loc[a["seed"] == s, "run_key"].iloc[0] for s in seeds]
        kb = [b.loc[b["seed"] == s, "run_key"].iloc[0] for s in seeds]
        key = (tuple(ka), tuple(kb), convention, tuple(metrics))
        if key not in self._paired:

            ra, rb = self._runs(ka), self._runs(kb)
            self._paired[key] = paired(ra, rb, metrics, convention) if ra and rb else None
        return self._paired[key]


def markdown(frame: pd.DataFrame) -> str:
    """The one renderer: a frame of display strings as a markdown table."""
    return frame.to_markdown(index=False, disable_numparse=True)


def _metrics(metrics: Sequence[str] | None) -> list[str]:

    out = list(metrics or METRICS)
    bad = [m for m in out if m not in METRIC_NAMES]
    if bad:
        raise ConfigError(f"Unknown metric(s) {', '.join(bad)}; use any of {', '.join(METRIC_NAMES)}.")
    return out


def summary_frame(df: pd.DataFrame, convention: str = "paper", metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Numbers of :func:`summary_table`: one row per (dataset, backbone, method, variant) with the
    mean, sample std, 95 % t interval over seeds (``lo``, ``hi``) and count over seeds of each
    metric (default overall/many/medium/few) under ``convention``."""

    cols = metric_columns(convention)
    metrics = _metrics(metrics)
    rows = []
    for (dataset, backbone, method, variant), g in df.groupby(["dataset", "backbone", "method", "variant"],
                                                              sort=False):
        row: dict[str, Any] = {"dataset": dataset, "backbone": backbone, "method": method, "variant": variant,
                               "seeds": int(g["seed"].nunique())}
        for m in metrics:
            v = g[cols[m]].dropna()
            row[f"{m}_mean"] = v.mean() if len(v) else float("nan")
            row[f"{m}_std"] = v.std(ddof=1) if len(v) > 1 else float("nan")
            row[f"{m}_lo"], row[f"{m}_hi"] = t_interval(v)
        rows.append(row)
    return pd.DataFrame(rows, columns=["dataset", "backbone", "method", "variant", "seeds",
                                       *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "lo", "hi"))])


SIGNIFICANT = {"higher": " ▲", "lower": " ▼"}


def summary_table(df: pd.DataFrame, convention: str = "paper", *, ci: str = "seeds",
                  metrics: Sequence[str] | None = None, evidence: Evidence | None = None,
                  against: str | None = None, alpha: float = 0.05) -> str:
    """Markdown: one row per (dataset, backbone, method, variant) of a :func:`load_results` frame,
    each metric (default overall/many/medium/few) under ``convention`` as :func:`cell` with ``ci``,
    and a line saying what the numbers are.

    ``against`` (a method; its plain runs, variant "") marks each cell whose difference from that
    method's row on the same data set and backbone is significant at ``alpha`` after Holm's
    correction over every cell compared in the table: ▲ higher, ▼ lower (paired bootstrap over the
    test images and the seeds both have, :func:`ltrbench.stats.paired`). ``ci="bootstrap"`` and
    ``against`` read the runs' predictions from ``evidence``."""
    cols = metric_columns(convention)
    metrics = _metrics(metrics)
    if (ci == "bootstrap" or against) and evidence is None:
        raise ConfigError("Bootstrap intervals and --against need the runs' records (their per-image predictions).")
    rows, tests = [], []
    groups = list(df.groupby(["dataset", "backbone", "method", "variant"], sort=False))
    for (dataset, backbone, method, variant), g in groups:
        row = {"method": method + (f" [{variant}]" if variant else ""), "dataset": dataset, "backbone": backbone,
               "seeds": str(g["seed"].nunique())}
        seeds = g["seed"].nunique()
        for m in metrics:
            iv = evidence.pooled(list(g["run_key"]), convention, m) if ci == "bootstrap" else None
            row[m] = cell(g[cols[m]], ci, iv, digits_of(m))
            have = g.loc[g[cols[m]].notna(), "seed"].nunique()  # a missing value (NaN) is no replicate
            if 0 < have < seeds:
                row[m] += f" ({have} of {seeds} seeds)"
        if against and not (method == against and not variant):
            base = df[(df["method"] == against) & (df["variant"] == "") & (df["dataset"] == dataset)
                      & (df["backbone"] == backbone)]
            res = evidence.paired(g, base, convention, metrics) if len(base) else None
            for m in metrics:
                if res is not None and not pd.isna(res[m].p_value):
                    tests.append((len(rows), m, res[m]))
        rows.append(row)
    lines = [markdown(pd.DataFrame(rows, columns=["method", "dataset", "backbone", "seeds", *metrics])), "",
             f"Cells: {CI_NOTE[ci]}."]
    if against:

        adjusted = holm([t[2].p_value for t in tests])
        marked = 0
        for (i, m, res), p in zip(tests, adjusted):
            if p < alpha and res.delta != 0:
                rows[i][m] += SIGNIFICANT["higher" if res.delta > 0 else "lower"]
                marked += 1
        lines[0] = markdown(pd.DataFrame(rows, columns=["method", "dataset", "backbone", "seeds", *metrics]))
        lines.append(f"▲/▼: higher/lower than {against} on the same data set and backbone at {alpha:g} after Holm's "
                     f"correction over the {len(tests)} cells compared ({marked} marked; paired bootstrap over the "
                     "test images and the seeds both have).")
    return "\n".join(lines)


# --------------------------------------------------------------------------- paper numbers and table specs


@dataclass(frozen=True)
class PaperNumber:
    value: float
    convention: str | None  # the shot convention of a many/medium/few number; None for overall


@dataclass(frozen=True)
class TableRow:
    """One printed row of a paper table; ``method`` is set for the paper's own (runnable) rows."""

    index: int  # the row's number as printed
    label: str
    printed_backbone: str
    dataset: str
    input_size: int
    split: str
    provenance: str  # run | cited
    paper: Mapping[str, PaperNumber]
    ref: str = ""
    source: str = ""
    note: str = ""
    method: str | None = None
    backbone: str | None = None  # the backbone ltrbench runs (a registered name)
    overrides: tuple[str, ...] = ()

    @property
    def runnable(self) -> bool:
        return self.method is not None

    @property
    def origin(self) -> str:
        """``run`` or ``cited [N]``, as the tables show it."""
        return "run" if self.provenance == "run" else f"cited {self.ref}".strip()


@dataclass(frozen=True)
class TableSpec:
    """A paper table: every printed row with its numbers; the paper's own rows as runs."""

    number: int
    title: str
    rows: tuple[TableRow, ...]
    source: Path = field(default=Path())

    def variant(self, row: TableRow) -> str:
        """The name a row's runs carry in their results (``t<table>r<printed row>``)."""
        return f"t{self.number}r{row.index}"

    @property
    def runs(self) -> tuple[TableRow, ...]:
        return tuple(r for r in self.rows if r.runnable)

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRICS if any(m in r.paper for r in self.rows)]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.rows))


def available_tables() -> list[int]:
    return sorted(int(p.stem[5:]) for p in TABLE_DIR.glob("table*.yaml"))


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> pd.DataFrame:
    """results/paper_numbers.csv as a frame (:data:`PAPER_COLUMNS`), checked for its columns."""
    if not path.is_file():
        raise ConfigError(f"The paper's numbers are missing: {path} does not exist (it is part of the repository, "
                          "and of an installed ltrbench as ltrbench/paper/paper_numbers.csv); reinstall ltrbench.")
    frame = pd.read_csv(path, dtype={"ref": str, "source": str, "note": str, "convention": str}, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks the columns {', '.join(missing)}.")
    bad = sorted(set(frame["convention"]) - {"", *CONVENTIONS})
    if bad:
        raise ConfigError(f"{path}: unknown shot convention(s) {bad}; use one of {sorted(CONVENTIONS)} or leave empty.")
    return frame


def load_table(number: int, folder: Path = TABLE_DIR, numbers: Path = PAPER_NUMBERS) -> TableSpec:
    """Table ``number``: its printed rows (from ``numbers``) joined with its run specs (``folder``)."""
    path = folder / f"table{number}.yaml"
    if not path.is_file():
        raise ConfigError(f"No table spec for table {number}; available: {', '.join(map(str, available_tables()))}.")
    doc = yaml.safe_load(path.read_text())
    printed = load_paper_numbers(numbers)
    printed = printed[printed["table"] == int(doc["table"])]
    if printed.empty:
        raise ConfigError(f"{numbers} has no numbers of table {doc['table']}.")
    runs = {int(r["row"]): r for r in doc.get("runs", ())}
    rows = []
    for index, g in printed.groupby("row", sort=True):
        first = g.iloc[0]
        paper = {m: PaperNumber(float(v), c or None) for m, v, c in zip(g["metric"], g["value"], g["convention"])}
        run = runs.pop(int(index), None)
        if first["provenance"] == "run" and run is None:
            raise ConfigError(f"{path}: table {number} row {index} ({first['label']}) is the paper's own run but has "
                              "no entry under `runs:`; add one (row, method, backbone, set).")
        if first["provenance"] == "cited" and run is not None:
            raise ConfigError(f"{path}: table {number} row {index} ({first['label']}) is cited from {first['ref']}, "
                              "not the paper's run; ltrbench runs only the paper's own rows.")
        rows.append(TableRow(
            index=int(index), label=str(first["label"]), printed_backbone=str(first["backbone"]),
            dataset=str(first["dataset"]), input_size=int(first["input_size"]), split=str(first["split"]),
            provenance=str(first["provenance"]), paper=paper, ref=str(first["ref"]), source=str(first["source"]),
            note=str(first["note"]),
            method=run["method"] if run else None,
            backbone=(run.get("backbone", doc.get("backbone")) if run else None),
            overrides=tuple(run.get("set", ())) if run else ()))
    if runs:
        raise ConfigError(f"{path}: `runs:` names row(s) {sorted(runs)} that table {number} does not print "
                          f"(rows 1–{len(rows)} in {numbers.name}).")
    return TableSpec(int(doc["table"]), doc["title"], tuple(rows), path)


# --------------------------------------------------------------------------- ours against a table


def row_results(spec: TableSpec, df: pd.DataFrame, dataset: str | None = None) -> dict[int, pd.DataFrame]:
    """The results of each runnable row (by printed row number): runs of the row's variant and
    method, on ``dataset`` when given, else on the row's own data set when there are any, else on
    the one other data set the table was run on (the built-in world)."""
    out: dict[int, pd.DataFrame] = {}
    for r in spec.runs:
        mine = df[(df["variant"] == spec.variant(r)) & (df["method"] == r.method)] if len(df) else df
        if dataset is not None:
            mine = mine[mine["dataset"] == dataset]
        elif (mine["dataset"] == r.dataset).any():
            mine = mine[mine["dataset"] == r.dataset]
        elif mine["dataset"].nunique() > 1:
            raise ConfigError(f"Table {spec.number} row {r.index} has results on several data sets "
                              f"({', '.join(sorted(mine['dataset'].unique()))}); name one with --dataset.")
        out[r.index] = mine
    return out


def _paper_cell(number: PaperNumber | None, convention: str) -> str:
    if number is None:
        return MISSING
    other = number.convention is not None and number.convention != convention
    return f"{number.value:.1f}" + (OTHER_CONVENTION if other else "")


def comparable(number: PaperNumber, convention: str) -> bool:
    """Ours under ``convention`` and this paper number measure the same thing (overall: always)."""
    return number.convention is None or number.convention == convention


def render_table(spec: TableSpec, df: pd.DataFrame, convention: str = "paper", dataset: str | None = None,
                 tolerance: float = TOLERANCE, ci: str = "seeds", evidence: Evidence | None = None) -> str:
    """A paper table as printed (every row, cited ones included), ours (mean ± std over seeds) under
    ``convention`` beside the paper's numbers, and ours − paper where both were measured alike.

    A difference beyond ±``tolerance`` points is marked with ⚠. On another data set than the
    paper's (the built-in world) no difference is computed: only the order of rows is comparable.
    """
    cols = metric_columns(convention)
    results = row_results(spec, df, dataset)
    metrics = spec.metrics
    rows, others, elsewhere = [], False, set()
    for r in spec.rows:
        mine = results.get(r.index, df.iloc[0:0])
        row = {"#": str(r.index), "row": r.label, "backbone": r.printed_backbone, "from": r.origin}
        if len(spec.datasets) > 1:
            row["dataset"] = r.dataset
        row["seeds"] = str(mine["seed"].nunique()) if r.runnable else MISSING
        same = len(mine) > 0 and (mine["dataset"] == r.dataset).all()
        if len(mine) and not same:
            elsewhere |= set(mine["dataset"])
        for m in metrics:
            number = r.paper.get(m)
            others |= number is not None and not comparable(number, convention)
            vals = mine[cols[m]].dropna() if len(mine) else pd.Series(dtype=float)
            iv = (evidence.pooled(list(mine.loc[vals.index, "run_key"]), convention, m)
                  if ci == "bootstrap" and evidence is not None and len(vals) else None)
            row[f"{m} ours"] = cell(vals, ci, iv) if r.runnable else MISSING
            row[f"{m} paper"] = _paper_cell(number, convention)
            row[f"{m} Δ"] = MISSING
            if same and len(vals) and number is not None and comparable(number, convention):
                d = vals.mean() - number.value
                row[f"{m} Δ"] = f"{d:+.1f}" + (" ⚠" if abs(d) > tolerance else "")
        rows.append(row)
    lines = [f"### {spec.title}: ours vs paper ({CONVENTION_NOTE[convention]})", "", markdown(pd.DataFrame(rows)), "",
             f"Ours: {CI_NOTE[ci]}."]
    if others:
        other = [c for c in CONVENTIONS if c != convention]
        lines.append(f"{OTHER_CONVENTION} measured under the other shot convention "
                     f"({'; '.join(CONVENTION_NOTE[c] for c in other)}): shown as printed, not compared (no Δ).")
    cited = {r.ref: r.source for r in spec.rows if r.provenance == "cited"}
    if cited:
        lines.append("Cited rows are quoted by the paper from other papers and not run by ltrbench: "
                     + "; ".join(f"{ref} {src}" for ref, src in sorted(cited.items(), key=lambda kv: _ref_key(kv[0])))
                     + ".")
    notes: dict[str, list[str]] = {}
    for r in spec.rows:
        if r.note and r.provenance == "run":
            notes.setdefault(r.note, []).append(str(r.index))
    if notes:
        lines.append("Notes: " + "; ".join(f"row{'s' if len(ix) > 1 else ''} {', '.join(ix)}: {n}"
                                           for n, ix in notes.items()) + ".")
    if elsewhere:
        lines.append(f"Ours ran on {', '.join(sorted(elsewhere))}: the paper's numbers are for "
                     f"{', '.join(spec.datasets)}; compare the order of rows, not the values (`run_bench.py diff`).")
    return "\n".join(lines).rstrip() + "\n"


def _ref_key(ref: str) -> int:
    digits = "".join(c for c in ref if c.isdigit())
    return int(digits) if digits else 0


# --------------------------------------------------------------------------- diff


DIFF_COLUMNS = ("table", "row", "label", "dataset", "metric", "convention", "seeds", "ours_mean", "ours_std",
                "ours_lo", "ours_hi", "interval", "paper", "delta", "status", "in_interval")
#: What ``diff --strict`` requires of each paper number: within the tolerance, inside our 95 %
#: interval, either of the two, or both.


def diff_frame(spec: TableSpec, df: pd.DataFrame, dataset: str | None = None,
               tolerance: float = TOLERANCE, records: Sequence[Mapping[str, Any]] = (),
               ci: str = "seeds") -> pd.DataFrame:
    """Every number of the paper's own rows on their data set against ours, one row per number.

    Ours is taken under the paper number's shot convention (overall has none), so Δ always compares
    like with like. ``status``: ``within`` (|Δ| ≤ tolerance), ``outside``, or ``missing`` (no result
    of that row on its data set). With ``dataset``, only the rows whose paper data set it is.
    ``ours_lo``/``ours_hi``: our 95 % interval, the t interval over seeds with two seeds or more
    (``interval`` = ``seeds``), else the one run's bootstrap interval over test images
    (``bootstrap``); with ``ci="bootstrap"`` the bootstrap interval of the mean over seeds (test
    images resampled, seeds paired; :class:`Evidence` of ``records``) whatever the seeds.
    ``in_interval``: whether the paper's number lies inside it (None: no interval).
    """
    stored = {r.get("run_key"): r.get("intervals") or {} for r in records}
    evidence = Evidence(records) if ci == "bootstrap" else None
    results = row_results(spec, df, dataset)
    out = []
    for r in spec.runs:
        if dataset is not None and dataset != r.dataset:
            continue
        mine = results[r.index]
        mine = mine[mine["dataset"] == r.dataset] if len(mine) else mine
        for m, number in r.paper.items():
            col = metric_columns(number.convention or "paper")[m]
            vals = mine[col].dropna() if len(mine) else pd.Series(dtype=float)
            mean = float(vals.mean()) if len(vals) else float("nan")
            std = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
            delta = mean - number.value if len(vals) else float("nan")
            status = "missing" if not len(vals) else ("within" if abs(delta) <= tolerance else "outside")
            lo, hi = t_interval(vals)
            source = "seeds" if not pd.isna(lo) else ""
            if evidence is not None and len(vals):
                got = evidence.pooled(list(mine.loc[vals.index, "run_key"]), number.convention or "paper", m)
                (lo, hi), source = (got, "bootstrap") if got else ((float("nan"), float("nan")), "")
            elif len(vals) == 1:
                one = stored.get(mine.loc[vals.index[0], "run_key"], {}).get(number.convention or "paper", {}).get(m)
                if one:
                    (lo, hi), source = one, "bootstrap"
            inside = None if not source else bool(lo <= number.value <= hi)
            out.append({"table": spec.number, "row": r.index, "label": f"{r.label} {r.printed_backbone}".strip(),
                        "dataset": r.dataset, "metric": m, "convention": number.convention or "",
                        "seeds": int(mine["seed"].nunique()) if len(mine) else 0, "ours_mean": mean, "ours_std": std,
                        "ours_lo": lo, "ours_hi": hi, "interval": source, "paper": number.value, "delta": delta,
                        "status": status, "in_interval": inside})
    return pd.DataFrame(out, columns=list(DIFF_COLUMNS))


@dataclass(frozen=True)
class OrderComparison:
    """The order of a table's rows on a data set without paper numbers, against the paper's order."""

    table: int
    dataset: str  # where ours ran
    paper_dataset: str  # the rows compared share this paper data set
    metric: str
    rows: tuple[int, ...]  # printed row numbers compared (both ours and the paper's number exist)
    missing: tuple[int, ...]  # runnable rows of the group without a result
    tau: float  # Kendall's τ-b (NaN with fewer than two rows)
    p_value: float
    flips: tuple[tuple[int, int], ...]  # (a, b): the paper has a above b, ours has b above a
    ours: Mapping[int, float]
    paper: Mapping[int, float]

    @property
    def pairs(self) -> int:
        return len(self.rows) * (len(self.rows) - 1) // 2


def order_comparison(spec: TableSpec, df: pd.DataFrame, dataset: str) -> list[OrderComparison]:
    """Kendall's τ between our order of the runnable rows on ``dataset`` and the paper's, per paper
    data set of the rows (Tables 8 and 10 span three and two) and per metric, with the pairs that
    flip. Ours is the mean over seeds under the paper number's shot convention."""
    from scipy.stats import kendalltau  # scipy.stats takes ~1 s to import: only the order comparison needs it

    results = row_results(spec, df, dataset)
    out = []
    for paper_ds in spec.datasets:
        group = [r for r in spec.runs if r.dataset == paper_ds]
        for m in spec.metrics:
            ours, paper, missing = {}, {}, []
            for r in group:
                number = r.paper.get(m)
                if number is None:
                    continue
                vals = results[r.index][metric_columns(number.convention or "paper")[m]].dropna()
                if not len(vals):
                    missing.append(r.index)
                    continue
                ours[r.index], paper[r.index] = float(vals.mean()), number.value
            idx = tuple(ours)
            tau, p = (float("nan"), float("nan"))
            if len(idx) >= 2:
                res = kendalltau([paper[i] for i in idx], [ours[i] for i in idx])
                tau, p = float(res.statistic), float(res.pvalue)
            flips = tuple((a, b) if paper[a] > paper[b] else (b, a) for a, b in itertools.combinations(idx, 2)
                          if (paper[a] - paper[b]) * (ours[a] - ours[b]) < 0)
            if idx or missing:
                out.append(OrderComparison(spec.number, dataset, paper_ds, m, idx, tuple(missing), tau, p, flips,
                                           ours, paper))
    return out


def diff_datasets(spec: TableSpec, df: pd.DataFrame, dataset: str | None = None) -> list[str]:
    """The data sets a diff of ``spec`` covers: ``dataset``, else those the table's rows were run
    on, else (no result at all) the paper's own."""
    if dataset is not None:
        return [dataset]
    variants = {spec.variant(r) for r in spec.runs}
    ran = list(dict.fromkeys(df.loc[df["variant"].isin(variants), "dataset"])) if len(df) else []
    return ran or spec.datasets


@dataclass
class DiffReport:
    """A rendered diff and what ``--strict`` judges: failing rows (missing or outside tolerance)."""

    markdown: str
    values: pd.DataFrame
    orders: list[OrderComparison]

    @property
    def failures(self) -> int:
        """Failing numbers under the tolerance rule (``--strict``'s default)."""
        return self.failing("tolerance")

    def failing(self, rule: str = "tolerance") -> int:
        """Missing rows and numbers that break ``rule`` (:data:`STRICT_RULES`): outside the
        tolerance, outside our 95 % interval (or without one), outside either, or outside both."""
        if rule not in STRICT_RULES:
            raise ConfigError(f"Unknown --strict rule {rule!r}; use one of {', '.join(STRICT_RULES)}.")
        missing_order = sum(len(o.missing) for o in self.orders if o.metric == "overall")
        v = self.values
        missing = v["status"] == "missing"
        tol = v["status"] == "outside"
        ivl = ~missing & (v["in_interval"] != True)  # noqa: E712 (None: no interval, which fails)
        bad = {"tolerance": tol, "interval": ivl, "either": tol & ivl, "both": tol | ivl}[rule]
        return int((missing | bad).sum()) + missing_order


def _fmt(x: float, signed: bool = False) -> str:
    if pd.isna(x):
        return MISSING
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def render_diff(spec: TableSpec, df: pd.DataFrame, dataset: str | None = None,
                tolerance: float = TOLERANCE, records: Sequence[Mapping[str, Any]] = (),
                metrics: Sequence[str] | None = None, ci: str = "seeds") -> DiffReport:
    """Markdown of :func:`diff_frame` for the table's data sets with paper numbers, and of
    :func:`order_comparison` for any other data set it was run on."""
    lines: list[str] = []
    values = []
    orders: list[OrderComparison] = []
    for ds in diff_datasets(spec, df, dataset):
        if ds in spec.datasets:
            d = diff_frame(spec, df, ds, tolerance, records, ci)
            if metrics:
                d = d[d["metric"].isin(metrics)].reset_index(drop=True)
            values.append(d)
            lines += _render_values(spec, d, ds, tolerance, ci)
        else:
            o = [c for c in order_comparison(spec, df, ds) if not metrics or c.metric in metrics]
            orders += o
            lines += _render_order(spec, o, ds)
    vals = pd.concat(values, ignore_index=True) if values else pd.DataFrame(columns=list(DIFF_COLUMNS))
    return DiffReport("\n".join(lines).rstrip() + "\n", vals, orders)


def _render_values(spec: TableSpec, d: pd.DataFrame, dataset: str, tolerance: float, ci: str = "seeds") -> list[str]:
    shown = pd.DataFrame({
        "#": d["row"].astype(str), "row": d["label"], "metric": d["metric"],
        "convention": d["convention"].replace("", MISSING), "seeds": d["seeds"].astype(str),
        "ours": [mean_std([m]) if pd.isna(s) else f"{m:.1f} ± {s:.1f}" for m, s in zip(d["ours_mean"], d["ours_std"])],
        "paper": d["paper"].map(_fmt), "Δ": d["delta"].map(lambda x: _fmt(x, signed=True)),
        "status": d["status"].map({"within": "within", "outside": "⚠ outside", "missing": "missing"}),
        "ours 95 % interval": [MISSING if not src else f"[{lo:.1f}, {hi:.1f}] ({src})"
                               for lo, hi, src in zip(d["ours_lo"], d["ours_hi"], d["interval"])],
        "in interval": d["in_interval"].map({True: "inside", False: "⚠ outside"}).fillna(MISSING),
    })
    if ci == "none":  # judged by --strict interval all the same, not shown
        shown = shown.drop(columns=["ours 95 % interval", "in interval"])
    counts = d["status"].value_counts()
    head = (f"### {spec.title}: ours vs paper on {dataset} (tolerance ±{tolerance:g} points; many/medium/few "
            f"of ours under each paper number's shot convention)")
    inside = int((d["in_interval"] == True).sum())  # noqa: E712
    outside = int((d["in_interval"] == False).sum())  # noqa: E712
    tail = (f"{len(d)} numbers: {counts.get('within', 0)} within, {counts.get('outside', 0)} outside, "
            f"{counts.get('missing', 0)} missing (rows with no result on {dataset}); the paper's number inside our "
            f"95 % interval: {inside}, outside: {outside}, no interval: {len(d) - inside - outside} (interval: t over "
            "seeds with two or more, else the one run's bootstrap over test images; `--ci bootstrap`: the bootstrap of the "
            "mean over seeds).")
    return [head, "", markdown(shown) if len(d) else "(no row of this table is on this data set)", "", tail, ""]


def _render_order(spec: TableSpec, orders: list[OrderComparison], dataset: str) -> list[str]:
    label = {r.index: f"{r.label} {r.printed_backbone}".strip() for r in spec.rows}
    lines = [f"### {spec.title}: order of rows on {dataset}", "",
             f"Only the order of rows is comparable here: the paper's numbers are for {', '.join(spec.datasets)}, "
             f"ours ran on {dataset}. Kendall's τ-b between the paper's order and ours (1: same order, −1: "
             "reversed), and the pairs of rows whose order flips.", ""]
    summary = [{"paper data set": o.paper_dataset, "metric": o.metric, "rows": str(len(o.rows)),
                "Kendall's τ": _fmt_tau(o.tau), "p": _fmt_tau(o.p_value, 2),
                "flipped pairs": f"{len(o.flips)} of {o.pairs}",
                "missing rows": ", ".join(map(str, o.missing)) or MISSING} for o in orders]
    lines += [markdown(pd.DataFrame(summary)) if summary else "(no result)", ""]
    for o in orders:
        for a, b in o.flips:
            lines.append(f"- {o.metric} ({o.paper_dataset} rows): paper #{a} {label[a]} {o.paper[a]:.1f} > "
                         f"#{b} {label[b]} {o.paper[b]:.1f}; ours #{a} {o.ours[a]:.1f} < #{b} {o.ours[b]:.1f}")
    return [*lines, ""]


def _fmt_tau(x: float, digits: int = 2) -> str:
    return MISSING if pd.isna(x) else f"{x:.{digits}f}"


# --------------------------------------------------------------------------- tables beyond the paper
#
# ``configs/tables/<name>.yaml`` with a ``name`` (not a ``table`` number): rows of (label, method,
# --set overrides), no paper numbers. They run with ``run_bench.py --table <name>`` (on --dataset,
# default the spec's ``dataset``), print with ``tables --table <name>`` and appear in ``report``.
# Every row shows the trainable and added parameter counts its runs recorded. The leaderboard is
# not a spec: every method and variant of a results folder, ranked by overall accuracy per data
# set and backbone.


@dataclass(frozen=True)
class ExtraRow:
    index: int
    label: str
    method: str
    dataset: str
    backbone: str | None = None
    overrides: tuple[str, ...] = ()
    runnable: bool = True


@dataclass(frozen=True)
class ExtraTable:
    """A table beyond the paper: labelled runs, ours only."""

    name: str
    title: str
    rows: tuple[ExtraRow, ...]
    note: str = ""
    source: Path = field(default=Path())

    def variant(self, row: ExtraRow) -> str:
        return f"{self.name}-r{row.index}"

    @property
    def runs(self) -> tuple[ExtraRow, ...]:
        return self.rows


def extra_tables() -> list[str]:
    """The names of the specs beyond the paper under configs/tables/."""
    return sorted(p.stem for p in TABLE_DIR.glob("*.yaml") if not p.stem.startswith("table"))


def load_extra_table(name: str, folder: Path = TABLE_DIR) -> ExtraTable:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"No table {name!r}: the paper's tables are {', '.join(map(str, available_tables()))}, the "
                          f"others {', '.join(extra_tables()) or 'none'} (configs/tables/<name>.yaml).")
    doc = yaml.safe_load(path.read_text())
    rows = []
    for i, r in enumerate(doc.get("runs", ()), start=1):
        if "method" not in r or "label" not in r:
            raise ConfigError(f"{path}: run #{i} needs a label and a method, got {r!r}.")
        dataset = r.get("dataset", doc.get("dataset"))
        if not dataset:
            raise ConfigError(f"{path}: run #{i} has no data set; give the spec a `dataset:` (the default of "
                              "--table) or the run one.")
        rows.append(ExtraRow(i, str(r["label"]), str(r["method"]), str(dataset),
                             r.get("backbone", doc.get("backbone")), tuple(r.get("set", ()))))
    return ExtraTable(str(doc["name"]), str(doc["title"]), tuple(rows), str(doc.get("note", "")), path)


def any_table(ref: int | str) -> "TableSpec | ExtraTable":
    """Paper table N (a number) or a table beyond the paper (a name)."""
    return load_table(int(ref)) if str(ref).isdigit() else load_extra_table(str(ref))


def params_of(records: Sequence[Mapping[str, Any]]) -> dict[str, tuple[int | None, int | None]]:
    """run_key → (trainable, added) parameters of the run's training stages (summed over them)."""
    out = {}
    for r in records:
        p = list((r.get("params") or {}).values())
        out[r.get("run_key")] = (sum(x.get("trainable", 0) for x in p) if p else None,
                                 sum(x.get("added", 0) for x in p) if p else None)
    return out


def _count(values: Sequence[int | None]) -> str:
    v = sorted({x for x in values if x is not None})
    return MISSING if not v else ", ".join(f"{x:,}" for x in v)


def render_extra_table(spec: ExtraTable, df: pd.DataFrame, convention: str = "paper", dataset: str | None = None,
                       params: Mapping[str, tuple[int | None, int | None]] | None = None) -> str:
    cols = metric_columns(convention)
    params = params or {}
    lines = [f"### {spec.title} — top-1 accuracy (%), {CONVENTION_NOTE[convention]}", ""]
    if spec.note:
        lines += [spec.note, ""]
    rows = []
    for r in spec.rows:
        g = df[(df["variant"] == spec.variant(r)) & (df["method"] == r.method)] if len(df) else df
        if dataset is not None and len(g):
            g = g[g["dataset"] == dataset]
        row = {"#": r.index, "row": r.label, "method": r.method, "set": " ".join(r.overrides) or "",
               "dataset": ", ".join(sorted(g["dataset"].unique())) if len(g) else MISSING,
               "seeds": str(g["seed"].nunique()) if len(g) else "0"}
        row.update({m: mean_std(g[cols[m]]) if len(g) else MISSING for m in METRICS})
        keys = list(g["run_key"]) if len(g) else []
        row["trainable params"] = _count([params.get(k, (None, None))[0] for k in keys])
        row["added params"] = _count([params.get(k, (None, None))[1] for k in keys])
        rows.append(row)
    return "\n".join(lines) + "\n" + markdown(pd.DataFrame(rows)) + "\n"


def leaderboard(df: pd.DataFrame, convention: str = "paper",
                params: Mapping[str, tuple[int | None, int | None]] | None = None) -> str:
    """Every method (and variant) of ``df`` ranked by mean overall accuracy, one table per data set
    and backbone, mean ± std over seeds, with the parameter counts the runs recorded."""
    cols = metric_columns(convention)
    params = params or {}
    out = []
    for (dataset, backbone), d in df.groupby(["dataset", "backbone"], sort=True):
        rows = []
        for (method, variant), g in d.groupby(["method", "variant"], sort=False):
            row = {"method": method + (f" [{variant}]" if variant else ""), "seeds": str(g["seed"].nunique()),
                   "_key": g[cols["overall"]].mean()}
            row.update({m: mean_std(g[cols[m]]) for m in METRICS})
            keys = list(g["run_key"])
            row["trainable params"] = _count([params.get(k, (None, None))[0] for k in keys])
            row["added params"] = _count([params.get(k, (None, None))[1] for k in keys])
            rows.append(row)
        frame = pd.DataFrame(rows).sort_values("_key", ascending=False, na_position="last").drop(columns="_key")
        frame.insert(0, "rank", range(1, len(frame) + 1))
        out.append(f"### Leaderboard: {dataset}, {backbone} — top-1 accuracy (%), {CONVENTION_NOTE[convention]}\n\n"
                   + markdown(frame) + "\n")
    return "\n".join(out)


# --------------------------------------------------------------------------- shifted test distributions


def shifted_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Accuracy (%) on SADE's shifted test distributions (:data:`ltrbench.metrics.SHIFTS`) of every
    run: one row per (dataset, backbone, method, variant, seed, kind) with a column per
    distribution; ``kind`` is ``method`` (Σ_c q_c · acc_c of the run's per-class accuracy) or
    ``oracle`` (the same after the post-hoc prior correction that knows q; runs since evaluate v2)."""

    names = [shift_name(d, r) for d, r in SHIFTS]
    rows = []
    for r in records:
        got = shifted(r["per_class_accuracy"], np.asarray(r["train_counts"]), r.get("shifted_oracle_per_class"))
        base = {"dataset": r["dataset"], "backbone": r["backbone"], "method": r["method"],
                "variant": r.get("variant", ""), "seed": r["seed"]}
        for kind in ("method", "oracle"):
            if kind == "method" or any(got[n].get("oracle") is not None for n in names):
                rows.append({**base, "kind": kind, **{n: got[n].get(kind) for n in names}})
    frame = pd.DataFrame(rows, columns=["dataset", "backbone", "method", "variant", "seed", "kind", *names])
    frame[names] = frame[names].astype(float)
    return frame


def shifted_table(records: Sequence[Mapping[str, Any]], dataset: str) -> str:
    """Markdown: accuracy on each shifted test distribution of ``dataset``, one row per method (mean
    ± std over seeds) and, labelled as such, per method's oracle prior correction."""

    names = [shift_name(d, r) for d, r in SHIFTS]
    f = shifted_frame([r for r in records if r["dataset"] == dataset])
    rows = []
    for (backbone, method, variant, kind), g in f.groupby(["backbone", "method", "variant", "kind"], sort=False):
        label = method + (f" [{variant}]" if variant else "") + (" (oracle prior correction)" if kind == "oracle" else "")
        rows.append({"method": label, "backbone": backbone, "seeds": str(g["seed"].nunique()),
                     **{n: mean_std(g[n]) for n in names}})
    return "\n".join([
        f"### {dataset}: accuracy (%) under shifted test class distributions (SADE)", "",
        markdown(pd.DataFrame(rows, columns=["method", "backbone", "seeds", *names])), "",
        "Test class distribution q: classes ranked by training images, q ∝ ρ^(−rank/(C−1)); forward ρ: the "
        "training head stays the test head, backward ρ: reversed. Accuracy = Σ_c q_c · acc_c of the balanced "
        "split's per-class accuracy (uniform = mean class accuracy); mean ± std over seeds. The oracle rows "
        "know q and correct each prediction post hoc (arg max log softmax + log q − log π_train): an upper "
        "reference, not a method.", ""])


# --------------------------------------------------------------------------- compare


def _method_variant(name: str) -> tuple[str, str]:
    """``method`` or ``method[variant]``."""
    if name.endswith("]") and "[" in name:
        m, v = name[:-1].split("[", 1)
        return m, v
    return name, ""


def compare_table(records: Sequence[Mapping[str, Any]], a: str, b: str, *, dataset: str | None = None,
                  metrics: Sequence[str] | None = None, convention: str = "paper", where: Path | str = "") -> str:
    """Markdown: ``a`` − ``b`` (methods, or ``method[variant]``) on each data set and backbone both
    ran on, per metric: the means over the seeds both have, Δ with its 95 % paired bootstrap interval
    and p-value (test images resampled within each class, the same for both methods and every
    seed), and with three seeds or more a paired t-test over seeds (:func:`ltrbench.stats.paired`)."""

    metrics = _metrics(metrics)
    df = load_results(list(records))
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    (ma, va), (mb, vb) = _method_variant(a), _method_variant(b)
    ra = df[(df["method"] == ma) & (df["variant"] == va)]
    rb = df[(df["method"] == mb) & (df["variant"] == vb)]
    on = f" on {dataset}" if dataset else ""
    for name, rows in ((a, ra), (b, rb)):
        if rows.empty:
            have = ", ".join(sorted({m + (f"[{v}]" if v else "") for m, v in zip(df["method"], df["variant"])}))
            raise ConfigError(f"compare: no runs of {name}{on} under {where}; the results there are of: "
                              f"{have or 'nothing'}. Run it first (`run_bench.py --methods {ma}`).")
    evidence = Evidence(records)
    lines = [f"### {a} − {b}: paired comparison ({CONVENTION_NOTE[convention]})", ""]
    shown = 0
    for (ds, backbone, split), ga in ra.groupby(["dataset", "backbone", "eval_split"], sort=False, dropna=False):
        gb = rb[(rb["dataset"] == ds) & (rb["backbone"] == backbone) & (rb["eval_split"].fillna("") == (split or ""))]
        seeds = sorted(set(ga["seed"]) & set(gb["seed"]))
        if not seeds:
            continue
        missing = [k for k in (*ga["run_key"], *gb["run_key"]) if evidence.preds.get(k) is None]
        if missing:
            raise ConfigError(f"compare: {len(missing)} of the runs of {a} and {b} on {ds} have no per-image "
                              f"predictions in their result files (written before ltrbench stored them, evaluate "
                              f"stage version 1); run them again to record them (the other stages are cached).")
        res = evidence.paired(ga, gb, convention, metrics)
        rows = []
        for m in metrics:
            r = res[m]
            fmt = lambda x, signed=False, d=digits_of(m): MISSING if pd.isna(x) else (  # noqa: E731
                f"{x:+.{d}f}" if signed else f"{x:.{d}f}")
            better = {"A": a, "B": b, None: MISSING}[r.better] if r.p_value < 0.05 else "no difference at 0.05"
            rows.append({"metric": m + (" (lower is better)" if m in LOWER_IS_BETTER else ""),
                         f"A: {a}": fmt(r.a), f"B: {b}": fmt(r.b), "Δ": fmt(r.delta, True),
                         "95 % interval": MISSING if pd.isna(r.low) else f"[{fmt(r.low, True)}, {fmt(r.high, True)}]",
                         "p (bootstrap)": MISSING if pd.isna(r.p_value) else f"{r.p_value:.3g}",
                         "p (t over seeds)": MISSING if pd.isna(r.t_p_value) else f"{r.t_p_value:.3g}",
                         "better": better})
        lines += [f"{ds} · {backbone} · {split} split · seeds {', '.join(map(str, seeds))} ({len(seeds)} paired) · "
                  f"{res[metrics[0]].images} test images", "", markdown(pd.DataFrame(rows)), ""]
        shown += 1
    if not shown:
        raise ConfigError(f"compare: {a} and {b} have no run on the same data set, backbone, split and seed{on} "
                          f"under {where}; run both with the same --seeds.")
    lines.append("Δ = mean over the paired seeds of A − B. Interval and p (two-sided, H0: Δ = 0): paired bootstrap, "
                 f"the same resample of test images (within each class) for both methods and every seed; p (t over "
                 "seeds): paired t-test of the per-seed values (three seeds or more). Column better: the side Δ favours "
                 "where the bootstrap p < 0.05.")
    return "\n".join(lines) + "\n"
