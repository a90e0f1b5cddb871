"""Reports people look at: ``<out>/report/`` from a results folder.

:func:`build_report` writes

* ``report.md``: the tables (summary per shot convention, the paper tables the folder has runs
  of, the text corpus) and the figures, linked from ``figures/``;
* ``report.html``: the same document, self-contained (tables as HTML, figures embedded as PNG data
  URIs), to open or mail as one file;
* ``figures/*.png`` (matplotlib, Agg, 100 dpi: readable at 100 % zoom): per data set, the
  per-class accuracy gain of each method over a baseline with classes sorted by training images
  (the paper's Figure 4), many/medium/few bars per method with 95 % interval bars, accuracy against
  training images (log scale), accuracy under SADE's shifted test distributions (one line per
  method, the oracle prior correction dashed), the text corpus per class (sentences, and how many the anchor
  selection kept), and the training curves of the runs' training stages;
* ``tables/*.csv``: every table as numbers.

The results records give per-class accuracy, training counts and the keys of their stages; the
corpus and the training curves are read (read-only) from those stages' artifacts in the cache: a
stage whose artifact has ``mask.npy`` (C × M, True = a kept anchor sentence) is an anchor
selection, the input of it that has ``class_ids.npy`` (the class of every corpus sentence) is its
corpus; a training stage's ``history`` is in its ``stage.json`` (a head's in ``head.json``). A
figure whose inputs are missing (no baseline among the runs, a cache that was deleted) is left
out and the report says why. This module names no method and no data set: the baseline is an
argument (the CLI's default is in ``ltrbench/cli.py``).
"""
from __future__ import annotations

import base64
import html
import json
import logging
import re
import textwrap
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import LtrBenchError
from .metrics import BUCKETS, CONVENTION_NOTE, CONVENTIONS, SHIFTS, shift_name, shot_buckets
from .paths import cache_root
from .results import Skipped, load_results, metric_columns, scan_results
from .safeio import real_dir, refuse_links, write_atomic, write_with
from .stats import t_interval
from .tables import (CI_NOTE, METRICS, Evidence, available_tables, extra_tables, leaderboard, load_extra_table,
                     load_table, markdown, params_of, render_diff, render_extra_table, shifted_frame, shifted_table,
                     summary_frame, summary_table)

log = logging.getLogger(__name__)

DPI = 100  # a figure of W × H inches is W·100 × H·100 pixels: what a screen shows at 100 % zoom
STYLE = {"text.parse_math": False,  # names from result files are plain text in figures, never mathtext
         "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
         "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "figure.dpi": DPI, "savefig.dpi": DPI}
BUCKET_COLORS = {"many": "#dbe9f6", "medium": "#fdf0d5", "few": "#f9dcdc"}
BUCKET_RANGE = {"many": " (≥ 100 images)", "medium": "", "few": " (≤ 20 images)"}  # the paper convention
GAIN_COLORS = ("#2a9d5c", "#d1495b")  # gain ≥ 0, gain < 0


@dataclass
class Series:
    """The runs of one (method, variant) on one data set: per-class accuracy over seeds."""

    name: str  # as shown: method, or method [variant]
    method: str
    variant: str
    records: list[Mapping[str, Any]]

    @property
    def seeds(self) -> list[int]:
        return sorted({int(r["seed"]) for r in self.records})

    def per_class(self) -> np.ndarray:
        """Mean over seeds of each class's accuracy (%); NaN for a class never evaluated."""
        acc = np.array([[np.nan if v is None else v for v in r["per_class_accuracy"]] for r in self.records], float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: a class without images
            return np.nanmean(acc, axis=0)


@dataclass
class Section:
    """What the report says about one data set: markdown blocks, figures, CSV tables, notes."""

    dataset: str
    blocks: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    csvs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    folder: Path
    markdown: Path
    html: Path
    figures: list[Path]
    csvs: list[Path]
    notes: list[str]
    skipped: list[Skipped] = field(default_factory=list)  # files of <out>/runs that are not readable results


# --------------------------------------------------------------------------- the entry point


def build_report(out: Path, *, dataset: str | None = None, baseline: str | None = None,
                 cache: Path | None = None, ci: str = "seeds") -> Report:
    """Write ``<out>/report/`` from the result JSONs under ``<out>/runs`` (see the module docstring).

    ``dataset`` limits the report to one data set; ``baseline`` names the method the per-class
    gains are measured against (its plain runs, variant ""); ``cache`` is where the stages'
    artifacts are read (default: ``$LTRBENCH_CACHE``); ``ci``: what the tables show beside mean ± std
    (:data:`ltrbench.tables.CI_MODES`).
    """
    out = Path(out)
    scan = scan_results(out)
    records = scan.records
    if not records:
        unread = (f" ({len(scan.skipped)} file(s) there are not readable results, e.g. {scan.skipped[0].line()})"
                  if scan.skipped else "")
        raise LtrBenchError(f"No result JSONs under {out / 'runs'}{unread}; run `python run_bench.py --out {out}` first.")
    present = sorted({r["dataset"] for r in records})
    if dataset is not None and dataset not in present:
        raise LtrBenchError(f"No results on {dataset!r} under {out / 'runs'}; it has results on {', '.join(present)}.")
    cache = Path(cache) if cache is not None else cache_root()
    folder = out / "report"
    figdir, csvdir = folder / "figures", folder / "tables"
    refuse_links([("the report folder", folder), ("the report file", folder / "report.md"),  # before any work
                  ("the report file", folder / "report.html"), ("the figures folder", figdir),
                  ("the tables folder", csvdir)], f"the results folder {out}")
    for d, suffix in ((figdir, ".png"), (csvdir, ".csv")):
        real_dir(d, out, "the report's folder", create=True)  # a link here: refused, its target untouched
        for old in sorted(d.iterdir()):  # a report is rebuilt whole: no figure of an earlier one stays
            if old.name.endswith(suffix) and (old.is_symlink() or old.is_file()):
                old.unlink()  # a link is removed itself, never its target
    sections = [_section(ds, [r for r in records if r["dataset"] == ds], baseline, cache, figdir, csvdir, ci)
                for ds in ([dataset] if dataset else present)]
    md = _document(out, records, sections)
    drawn = {f"figures/{f}": figdir / f for s in sections for f in s.figures}  # what this report drew, only
    write_atomic(folder / "report.md", md, "the report file")
    write_atomic(folder / "report.html", to_html(md, drawn), "the report file")
    return Report(folder, folder / "report.md", folder / "report.html",
                  [figdir / f for s in sections for f in s.figures], [csvdir / c for s in sections for c in s.csvs],
                  [n for s in sections for n in s.notes], scan.skipped)


def _document(out: Path, records: Sequence[Mapping[str, Any]], sections: Sequence[Section]) -> str:
    revisions = sorted({md_text(r.get("git_revision")) for r in records})
    created = sorted(md_text(r.get("created", "")) for r in records if r.get("created"))
    made = "" if not created else f", made {created[0]}" + (f" to {created[-1]}" if created[-1] != created[0] else "")
    lines = ["# ltrbench report", "",
             f"{len(records)} runs from `{_code(out / 'runs')}` on {', '.join(md_text(s.dataset) for s in sections)}{made}"
             + f"; code revision(s): {', '.join(revisions)}. Accuracies are top-1 %, on each run's evaluation "
               "split; mean ± sample std over seeds where there are several, with the interval the tables name.", ""]
    for s in sections:
        lines += [f"## {md_text(s.dataset)}", ""]
        for block in s.blocks:
            lines += [block.rstrip(), ""]
        if s.notes:
            lines += ["Left out:", "", *(f"- {md_text(n)}" for n in s.notes), ""]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- text from result files

#: What markdown (and the report's HTML) would read as markup in a line of text.
_MD_SPECIAL = re.compile(r"([\\`*\[\]()!|<>&#~])")


def md_text(value: Any) -> str:
    """Free text from a result file (a name, a revision, a note naming them) as one line of plain
    markdown: line breaks become spaces and every markup character is backslash-escaped, so no
    image, link, HTML tag, table cell or heading can come from data."""
    text = re.sub(r"[\r\n\t\v\f\x00-\x08\x0b-\x1f\x7f]+", " ", str(value))
    return _MD_SPECIAL.sub(r"\\\1", text)


def _code(value: Any) -> str:
    """Text for inside a code span (no backtick or line break can end it)."""
    return re.sub(r"[`\r\n]+", "'", str(value))


def _escaped(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with its free-text columns as :func:`md_text` (for markdown tables only)."""
    df = df.copy()
    for c in ("method", "variant", "dataset", "backbone"):
        if c in df:
            df[c] = df[c].map(lambda v: v if v is None or (isinstance(v, float) and v != v) else md_text(v))
    return df


#: A cell a spreadsheet would run as a formula (OWASP "CSV injection").
_FORMULA = re.compile(r"^[=+\-@\t\r]")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every text cell that a spreadsheet would take for a formula prefixed with ``'``
    (numbers, and text that is a plain number, are kept)."""
    def cell(v: Any) -> Any:
        if isinstance(v, str) and _FORMULA.match(v) and not _NUMBER.match(v):
            return "'" + v
        return v

    out = frame.copy()
    for c in out.columns:
        if not pd.api.types.is_numeric_dtype(out[c]):
            out[c] = out[c].map(cell)
    out.columns = [cell(str(c)) for c in out.columns]
    return out


# --------------------------------------------------------------------------- one data set


def _series(records: Sequence[Mapping[str, Any]]) -> list[Series]:
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        groups.setdefault((r["method"], r.get("variant", "")), []).append(r)
    return [Series(m + (f" [{v}]" if v else ""), m, v, recs) for (m, v), recs in groups.items()]


def _section(dataset: str, records: list[Mapping[str, Any]], baseline: str | None, cache: Path, figdir: Path,
             csvdir: Path, ci: str = "seeds") -> Section:
    sec = Section(dataset)
    # Per-class numbers only compare over one class list: keep the runs whose training counts are
    # the most common ones (a folder mixing world sizes would otherwise pair unrelated classes).
    counts_of = Counter(tuple(r["train_counts"]) for r in records)
    counts = np.array(counts_of.most_common(1)[0][0])
    kept = [r for r in records if tuple(r["train_counts"]) == tuple(counts)]
    if len(kept) < len(records):
        sec.notes.append(f"{len(records) - len(kept)} runs on {dataset} with another class list (training counts) "
                         "than the others: left out of this section.")
    series = _series(kept)
    df = load_results(kept)
    evidence = Evidence(kept)
    _summary_tables(sec, df, csvdir, ci, evidence)
    _paper_tables(sec, df, csvdir, kept)
    _beyond_paper_tables(sec, df, kept)
    shown = md_text(dataset)
    shifted = shifted_frame(kept)
    where = _csv(sec, csvdir, f"shifted__{dataset}", shifted)
    sec.blocks.append(f"{shifted_table(kept, dataset)}\n{where}")

    import matplotlib  # matplotlib takes ~0.6 s to import: only the report draws

    with matplotlib.rc_context(STYLE):
        base = next((s for s in series if s.method == baseline and not s.variant), None)
        if base is None:
            sec.notes.append(f"the per-class gain figure: no runs of the baseline {baseline!r} on {dataset} "
                             "(name another with --baseline).")
        elif len(series) == 1:
            sec.notes.append(f"the per-class gain figure: {base.name} is the only method on {dataset}.")
        else:
            _add(sec, figdir, f"gain__{dataset}", _gain_figure(dataset, series, base, counts),
                 f"Per-class accuracy gain over {md_text(base.name)} on {shown}, classes sorted by training images "
                 "(most to fewest, as in the paper's Figure 4)")
        _add(sec, figdir, f"shots__{dataset}", _shots_figure(dataset, series, df),
             f"Many/medium/few accuracy per method on {shown} ({CONVENTION_NOTE['paper']}), 95 % interval bars")
        _add(sec, figdir, f"shifted__{dataset}", _shifted_figure(dataset, shifted),
             f"Accuracy against the test set's class imbalance on {shown} (SADE's shifted test distributions); "
             "dashed: the oracle prior correction that knows the test distribution")
        _add(sec, figdir, f"accuracy_vs_count__{dataset}", _count_figure(dataset, series, counts),
             f"Per-class accuracy against training images on {shown} (log scale)")
        corpus = _corpus(kept, cache)
        if corpus is None:
            sec.notes.append(f"the corpus figure: no run on {dataset} has an anchor selection stage whose artifacts "
                             f"are in the cache {cache} (mask.npy, and its corpus' class_ids.npy).")
        else:
            _add(sec, figdir, f"corpus__{dataset}", _corpus_figure(dataset, corpus, counts),
                 f"Text corpus per class on {shown}: sentences, and how many the anchor selection kept")
            _corpus_table(sec, dataset, corpus, csvdir)
        curves = _histories(kept, cache)
        if curves:
            _add(sec, figdir, f"training__{dataset}", _curves_figure(dataset, curves),
                 f"Training curves of the runs' training stages on {shown} (TensorBoard has the same per stage)")
        else:
            sec.notes.append(f"the training curves: no training stage of the runs on {dataset} is in the cache {cache}.")
    return sec


def _add(sec: Section, figdir: Path, name: str, fig, caption: str) -> None:
    path = figdir / f"{_safe(name)}.png"
    write_with(path, lambda tmp: fig.savefig(tmp, dpi=DPI, format="png"), "the report's figure")
    sec.figures.append(path.name)
    sec.blocks.append(f"![{caption}](figures/{path.name})\n\n*{caption}.*")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def _csv(sec: Section, csvdir: Path, name: str, frame: pd.DataFrame) -> str:
    path = csvdir / f"{_safe(name)}.csv"
    write_with(path, lambda tmp: csv_safe(frame).to_csv(tmp, index=False), "the report's table")
    sec.csvs.append(path.name)
    return f"(as numbers: `tables/{path.name}`)"


# --------------------------------------------------------------------------- tables


#: The long-tail metrics table of the report (paper convention for the per-bucket ECE).
LT_METRICS = ("mean_class", "harmonic", "geometric", "worst", "macro_f1", "nll", "ece", "ece_many", "ece_medium",
              "ece_few")


def _summary_tables(sec: Section, df: pd.DataFrame, csvdir: Path, ci: str = "seeds",
                    evidence: Evidence | None = None) -> None:
    for conv in CONVENTIONS:
        where = _csv(sec, csvdir, f"summary__{sec.dataset}__{conv}", summary_frame(df, conv))
        table = summary_table(_escaped(df), conv, ci=ci, evidence=evidence)
        sec.blocks.append(f"### Top-1 accuracy, {CONVENTION_NOTE[conv]}\n\n{table}\n\n{where}")
    where = _csv(sec, csvdir, f"metrics__{sec.dataset}", summary_frame(df, "paper", LT_METRICS))
    table = summary_table(_escaped(df), "paper", ci=ci, metrics=LT_METRICS, evidence=evidence)
    sec.blocks.append("### Long-tail metrics: mean, harmonic and geometric mean and worst of the class accuracies, "
                      "macro-F1 (%), NLL (nats), ECE (%, 15 bins; per bucket: paper convention)\n\n"
                      f"{table}\n\n{where}")


def _paper_tables(sec: Section, df: pd.DataFrame, csvdir: Path, records: Sequence[Mapping[str, Any]] = ()) -> None:
    """The paper tables this data set has runs of (variants ``t<N>r<row>``): ours against the
    paper's numbers, or the order of rows where the paper has no numbers for this data set."""
    for n in available_tables():
        spec = load_table(n)
        if not df["variant"].isin([spec.variant(r) for r in spec.runs]).any():
            continue
        rep = render_diff(spec, df, dataset=sec.dataset, records=records)
        shown = render_diff(spec, _escaped(df), dataset=md_text(sec.dataset), records=records).markdown  # the same, for markdown
        if len(rep.values):
            where = _csv(sec, csvdir, f"table{n}__diff__{sec.dataset}", rep.values)
        else:
            where = _csv(sec, csvdir, f"table{n}__order__{sec.dataset}", pd.DataFrame([{
                "table": o.table, "dataset": o.dataset, "paper_dataset": o.paper_dataset, "metric": o.metric,
                "rows": len(o.rows), "kendall_tau": o.tau, "p_value": o.p_value, "flipped_pairs": len(o.flips),
                "pairs": o.pairs, "flips": " ".join(f"{a}>{b}" for a, b in o.flips),
                "missing_rows": " ".join(map(str, o.missing))} for o in rep.orders]))
        sec.blocks.append(f"{shown}\n{where}")


def _beyond_paper_tables(sec: Section, df: pd.DataFrame, records: list[Mapping[str, Any]]) -> None:
    """The leaderboard (every method ranked, with parameter counts) and each table beyond the paper
    (configs/tables/<name>.yaml) this data set has runs of."""
    params = params_of(records)
    sec.blocks.append(leaderboard(df, "paper", params))
    for name in extra_tables():
        spec = load_extra_table(name)
        if df["variant"].isin([spec.variant(r) for r in spec.rows]).any():
            sec.blocks.append(render_extra_table(spec, df, "paper", dataset=sec.dataset, params=params))


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # see _section: imported only when a report is drawn

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _title(ax, text: str, fontsize: float = 11.0, **kw) -> None:
    """The figure's title (``suptitle``, centred on the whole figure, which a legend beside the axes
    does not narrow), every line wrapped to the figure's width: matplotlib never wraps, so a long
    subtitle ran past the figure's edge and was cut off. About 0.55 · size points a character."""
    fig = ax.figure
    per_char = 0.55 * fontsize * DPI / 72.0
    chars = max(30, int(fig.get_figwidth() * DPI * 0.94 / per_char))
    wrapped = "\n".join(textwrap.fill(line, chars) if line else line for line in text.split("\n"))
    fig.suptitle(wrapped, fontsize=fontsize, **kw)


def _colors(n: int) -> list:
    from matplotlib import colormaps  # see _section

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _order(counts: np.ndarray) -> np.ndarray:
    """Classes from the most training images to the fewest (stable: ties keep class order)."""
    return np.argsort(-counts, kind="stable")


def _shade_buckets(ax, counts_sorted: np.ndarray, legend: bool) -> None:
    """Background bands of the paper convention's many/medium/few over classes sorted by count."""
    buckets = shot_buckets(counts_sorted, "paper")
    for b in BUCKETS:
        idx = np.nonzero(buckets == b)[0]
        if len(idx):
            ax.axvspan(idx.min() - 0.5, idx.max() + 0.5, color=BUCKET_COLORS[b], zorder=0,
                       label=f"{b}-shot classes{BUCKET_RANGE[b]}" if legend else None)


def _gain_figure(dataset: str, series: Sequence[Series], base: Series, counts: np.ndarray):
    others = [s for s in series if s is not base]
    order = _order(counts)
    x = np.arange(len(counts))
    fig = _figure(10, 1.9 + 1.9 * len(others))
    axes = fig.subplots(len(others) + 1, 1, sharex=True, gridspec_kw={"height_ratios": [0.8] + [1] * len(others)})
    top = axes[0]
    _shade_buckets(top, counts[order], legend=True)
    top.bar(x, counts[order], width=1.0, color="#555555", label="training images")
    top.set_yscale("log")
    top.set_ylabel("train images")
    fig.suptitle(f"Per-class accuracy gain over {base.name} on {dataset} (classes sorted by training images; "
                 f"mean over seeds)", fontsize=12)
    base_acc = base.per_class()[order]
    window = max(3, len(counts) // 15)
    for ax, s in zip(axes[1:], others):
        gain = s.per_class()[order] - base_acc
        _shade_buckets(ax, counts[order], legend=False)
        ax.bar(x, np.where(gain >= 0, gain, 0), width=0.9, color=GAIN_COLORS[0])
        ax.bar(x, np.where(gain < 0, gain, 0), width=0.9, color=GAIN_COLORS[1])
        smooth = pd.Series(gain).rolling(window, center=True, min_periods=1).mean()
        ax.plot(x, smooth, color="black", lw=1.6)
        ax.axhline(0, color="black", lw=0.6)
        means = {b: np.nanmean(gain[shot_buckets(counts[order], 'paper') == b]) for b in BUCKETS
                 if (shot_buckets(counts[order], "paper") == b).any()}
        ax.set_ylabel("gain (points)")
        ax.set_title(f"{s.name} − {base.name} (seeds: {len(s.seeds)} vs {len(base.seeds)}); mean gain "
                     + ", ".join(f"{b} {v:+.1f}" for b, v in means.items()), fontsize=11, loc="left")
    # One legend for every panel, under them (inside a panel it would hide bars).
    from matplotlib.lines import Line2D  # see _section
    from matplotlib.patches import Patch  # see _section

    handles, labels = top.get_legend_handles_labels()
    handles += [Patch(color=GAIN_COLORS[0]), Patch(color=GAIN_COLORS[1]), Line2D([], [], color="black", lw=1.6)]
    labels += ["gain ≥ 0", "gain < 0", f"moving mean over {window} classes"]
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=9.5)
    axes[-1].set_xlabel("classes, from most to fewest training images")
    axes[-1].set_xlim(-0.5, len(counts) - 0.5)
    return fig


def _shots_figure(dataset: str, series: Sequence[Series], df: pd.DataFrame):
    cols = metric_columns("paper")
    n = len(series)
    fig = _figure(max(9.0, 1.25 * n + 3.0), 5.0)
    ax = fig.subplots()
    width = 0.8 / len(METRICS)
    palette = {"overall": "#4d4d4d", "many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
    for j, m in enumerate(METRICS):
        means, lows, highs = [], [], []
        for s in series:
            g = df[(df["method"] == s.method) & (df["variant"] == s.variant)]
            v = g[cols[m]].dropna()
            mean = v.mean() if len(v) else np.nan
            lo, hi = _interval(g, cols[m])
            means.append(mean)
            lows.append(mean - lo if not np.isnan(lo) else 0.0)
            highs.append(hi - mean if not np.isnan(hi) else 0.0)
        ax.bar(np.arange(n) + (j - 1.5) * width, means, width, yerr=[lows, highs], capsize=3, color=palette[m],
               label=m, error_kw={"elinewidth": 1.2})
    ax.set_xticks(np.arange(n), [f"{s.name}\n({len(s.seeds)} seed{'s' if len(s.seeds) > 1 else ''})"
                                 for s in series])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _title(ax, f"Accuracy by shot bucket on {dataset}, paper convention (many ≥ 100, few ≤ 20 training images)\n"
               "bars: mean over seeds; interval bars: 95 % t interval over seeds, clipped to 0–100 (one seed: the "
               "run's bootstrap interval over test images)", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="bucket")
    return fig


def _interval(g: pd.DataFrame, col: str) -> tuple[float, float]:
    """The 95 % interval a bar shows: t over seeds with two or more, else the one run's bootstrap
    interval (``<col>_lo``/``_hi``), else none (NaN)."""

    v = g[col].dropna()
    if len(v) >= 2:
        lo, hi = t_interval(v)
        return max(lo, 0.0), min(hi, 100.0)  # accuracies: the t interval clipped to [0, 100]
    if len(v) == 1 and f"{col}_lo" in g:
        row = g.loc[v.index[0]]
        return float(row[f"{col}_lo"]), float(row[f"{col}_hi"])
    return float("nan"), float("nan")


def _shifted_figure(dataset: str, shifted: pd.DataFrame):
    """Accuracy on SADE's test distributions, forward 50 … uniform … backward 50, one line per method
    (mean over seeds, 95 % t band over seeds), its oracle prior correction dashed."""

    names = [shift_name(d, r) for d, r in SHIFTS]
    groups = list(shifted.groupby(["method", "variant"], sort=False))
    entries = sum(1 for _, g in groups for kind in ("method", "oracle") if (g["kind"] == kind).any())
    ncol = 1 if entries <= 20 else 2  # every legend entry shown: a second column, and height, as needed
    fig = _figure(12 + 2.6 * (ncol - 1), max(6.0, 0.24 * -(-entries // ncol) + 1.6))
    ax = fig.subplots()
    x = np.arange(len(names))
    methods = list(dict.fromkeys((m, v) for (m, v), _ in groups))
    colors = dict(zip(methods, _colors(len(methods))))
    for (method, variant), g in groups:
        name = method + (f" [{variant}]" if variant else "")
        for kind, style in (("method", "-o"), ("oracle", "--")):
            k = g[g["kind"] == kind]
            if k.empty:
                continue
            mean = k[names].mean().to_numpy(float)
            label = name if kind == "method" else f"{name}: oracle prior correction"
            ax.plot(x, mean, style, color=colors[(method, variant)], lw=2 if kind == "method" else 1.3, ms=4,
                    label=label, alpha=1.0 if kind == "method" else 0.8)
            if kind == "method" and k["seed"].nunique() > 1:

                band = np.clip(np.array([t_interval(k[c]) for c in names]), 0, 100)
                ax.fill_between(x, band[:, 0], band[:, 1], color=colors[(method, variant)], alpha=0.12, lw=0)
    ax.axvline(names.index("uniform"), color="grey", ls=":", lw=1)
    ax.set_xticks(x, [n.replace("forward ", "fwd ").replace("backward ", "bwd ") for n in names], rotation=0)
    ax.set_xlabel("test class distribution, imbalance ratio ρ: forward (training head = test head) | uniform | "
                  "backward (tail = head)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    _title(ax, f"Accuracy under shifted test distributions on {dataset} (SADE: Σ_c q_c · acc_c)\n"
               "solid: the method (mean over seeds; band: 95 % t interval, clipped to 0–100)\n"
               "dashed: oracle prior correction that knows q (a reference, not a method; none for scores that "
               "are no logits or probabilities: zero-shot, NCM, KNN)", fontsize=10.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method", fontsize=8.5, ncol=ncol)
    return fig


def _count_figure(dataset: str, series: Sequence[Series], counts: np.ndarray):
    fig = _figure(10, 6)
    ax = fig.subplots()
    lo, hi = max(int(counts.min()), 1), int(counts.max())
    edges = np.geomspace(lo, hi + 1, 9)
    which = np.clip(np.digitize(counts, edges) - 1, 0, len(edges) - 2)
    for s, color in zip(series, _colors(len(series))):
        acc = s.per_class()
        ax.scatter(counts, acc, s=10, color=color, alpha=0.25, linewidths=0)
        xs, ys = [], []
        for b in range(len(edges) - 1):
            sel = (which == b) & ~np.isnan(acc)
            if sel.any():
                xs.append(float(np.exp(np.log(counts[sel]).mean())))
                ys.append(float(acc[sel].mean()))
        ax.plot(xs, ys, "-o", color=color, lw=2, ms=5, label=s.name)
    for t, name in ((20, "few ≤ 20"), (100, "many ≥ 100")):
        if lo <= t <= hi:
            ax.axvline(t, color="grey", ls="--", lw=1)
            ax.text(t, 101, name, ha="center", va="bottom", fontsize=9, color="grey")
    ax.set_xscale("log")
    ax.set_ylim(-2, 108)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("class accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(f"Per-class accuracy against training images on {dataset}\n(dots: classes, mean over seeds; "
                 "lines: mean of the classes within log-spaced bins)", fontsize=11)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="method")
    return fig


# --------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    sentences: np.ndarray  # per class
    kept: np.ndarray  # per class: anchors the selection kept
    capacity: int  # M, anchors per class at most
    selection: str  # the selection stage, as "<kind> <label>"
    source: str  # the corpus stage, as "<kind> <label>"


_KIND = re.compile(r"[A-Za-z0-9_]+")
_KEY = re.compile(r"[0-9a-f]{16}")


def _artifact(cache: Path, stage: Any) -> Path | None:
    """A stage's artifact folder in the cache, from a result file's ``stages`` entry; None when the
    entry is not a stage's kind and key (a result file never names a path the report reads)."""
    if not isinstance(stage, Mapping):
        return None
    kind, key = stage.get("kind"), stage.get("key")
    if not (isinstance(kind, str) and _KIND.fullmatch(kind) and isinstance(key, str) and _KEY.fullmatch(key)):
        return None
    return cache / kind / key


def _json(path: Path) -> Any:
    """A cached JSON file's content; None when it cannot be read as JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def _corpus(records: Sequence[Mapping[str, Any]], cache: Path) -> Corpus | None:
    """The corpus and anchor selection of the first run that has both in the cache (see the module
    docstring: found by their artifacts, not by method)."""
    for rec in records:
        stages = [s for s in rec.get("stages") or [] if _artifact(cache, s) is not None]
        by_key = {s["key"]: s for s in stages}
        for s in stages:
            folder = _artifact(cache, s)
            if not (folder / "mask.npy").is_file() or not (folder / "stage.json").is_file():
                continue
            meta = _json(folder / "stage.json")
            inputs = meta.get("inputs", []) if isinstance(meta, dict) else []
            for key in inputs if isinstance(inputs, list) else []:
                src = by_key.get(key) if isinstance(key, str) else None
                if src and (_artifact(cache, src) / "class_ids.npy").is_file():
                    try:
                        mask = np.load(folder / "mask.npy")
                        ids = np.load(_artifact(cache, src) / "class_ids.npy")
                        sentences = np.bincount(ids, minlength=mask.shape[0])
                    except (OSError, ValueError, TypeError, IndexError):  # not the arrays a selection writes
                        continue
                    return Corpus(sentences, mask.sum(1), int(mask.shape[1]),
                                  f"{s['kind']} {s.get('label')}", f"{src['kind']} {src.get('label')}")
    return None


def _corpus_figure(dataset: str, corpus: Corpus, counts: np.ndarray):
    order = _order(counts)
    x = np.arange(len(counts))
    fig = _figure(10, 5)
    ax = fig.subplots()
    ax.bar(x, corpus.sentences[order], width=0.85, color="#9ecae1", label="sentences in the corpus (light: not kept)")
    ax.bar(x, corpus.kept[order], width=0.85, color="#08519c", label=f"kept as anchors (at most M = {corpus.capacity})")
    ax.set_xlabel("classes, from most to fewest training images")
    ax.set_ylabel("sentences per class")
    ax.set_xlim(-0.5, len(counts) - 0.5)
    right = ax.twinx()
    right.plot(x, counts[order], color="#d62728", lw=2, label="training images (right, log)")
    right.set_yscale("log")
    right.set_ylabel("training images (log scale)")
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="lower left", framealpha=0.9)
    ax.set_title(f"Text corpus per class on {dataset}: sentences, and those kept as anchors\n"
                 f"(corpus: {corpus.source}; selection: {corpus.selection})", fontsize=11)
    return fig


def _corpus_table(sec: Section, dataset: str, corpus: Corpus, csvdir: Path) -> None:
    def stats(v: np.ndarray) -> dict[str, Any]:
        return {"min": int(v.min()), "max": int(v.max()), "mean": round(float(v.mean()), 1),
                "median": float(np.median(v)), "total": int(v.sum())}

    frame = pd.DataFrame([{"per class": "sentences in the corpus", **stats(corpus.sentences)},
                          {"per class": f"kept as anchors (M = {corpus.capacity})", **stats(corpus.kept)}])
    where = _csv(sec, csvdir, f"corpus__{dataset}", frame)
    shown = frame.astype(str)
    sec.blocks.append(f"### Text corpus ({md_text(corpus.source)}; anchors: {md_text(corpus.selection)})\n\n"
                      f"Sentences per class, as the paper's Table 7 counts them.\n\n{markdown(shown)}\n\n{where}")


# --------------------------------------------------------------------------- training curves


@dataclass
class Curve:
    kind: str
    label: str
    seed: Any
    history: list[Mapping[str, Any]]


def _histories(records: Sequence[Mapping[str, Any]], cache: Path) -> list[Curve]:
    """Every training stage of the runs with a per-epoch history, each key once."""
    seen, out = set(), []
    for rec in records:
        for s in rec.get("stages") or []:
            folder = _artifact(cache, s)
            if folder is None or s["key"] in seen:
                continue
            seen.add(s["key"])
            meta = _json(folder / "stage.json")
            if not isinstance(meta, dict):
                continue
            history = meta.get("history")
            if history is None:
                head = _json(folder / "head.json")
                history = head.get("history") if isinstance(head, dict) else None
            if _is_history(history):
                out.append(Curve(s["kind"], str(s.get("label") or s["kind"]), meta.get("run_seed"), history))
    return out


def _is_history(history: Any) -> bool:
    """Per-epoch rows as a training stage writes them (epoch, loss and lr numbers)."""
    num = (int, float)
    return bool(history) and isinstance(history, list) and all(
        isinstance(h, dict) and isinstance(h.get("epoch"), num) and isinstance(h.get("loss"), num)
        and isinstance(h.get("lr"), num) and (h.get("val_acc") is None or isinstance(h["val_acc"], num))
        for h in history)


def _curves_figure(dataset: str, curves: Sequence[Curve]):
    from matplotlib.ticker import MaxNLocator  # see _section
    panels: dict[tuple[str, str], list[Curve]] = {}
    for c in curves:
        panels.setdefault((c.kind, c.label), []).append(c)
    ncols = 2 if len(panels) > 1 else 1
    nrows = -(-len(panels) // ncols)
    fig = _figure(11, 0.6 + 2.7 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, ((kind, label), group) in zip(axes, panels.items()):
        right = ax.twinx()
        colors = _colors(len(group))
        for c, color in zip(sorted(group, key=lambda c: str(c.seed)), colors):
            ep = [h["epoch"] for h in c.history]
            name = "loss" + (f", seed {c.seed}" if c.seed is not None else "")
            ax.plot(ep, [h["loss"] for h in c.history], "-o", ms=3, color=color, label=name)
            right.plot(ep, [h["lr"] for h in c.history], "--", color=color, alpha=0.6, lw=1)
            val = [(h["epoch"], h["val_acc"]) for h in c.history if h.get("val_acc") is not None]
            if val:
                best = max(val, key=lambda t: t[1])
                ax.plot([], [], " ", label=f"best val acc {best[1]:.1f} (epoch {best[0]})")
        right.plot([], [], "--", color="grey", label="learning rate (right)")
        ax.set_title(f"{kind}: {label}", fontsize=10, loc="left")
        ax.set_xlabel("epoch")
        last = max(h["epoch"] for c in group for h in c.history)
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole
        ax.set_ylabel("training loss")
        right.set_ylabel("learning rate")
        right.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = right.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8.5, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Training curves of the runs' training stages on {dataset}: loss per epoch (solid), "
                 "learning rate (dashed)", fontsize=12)
    return fig


# --------------------------------------------------------------------------- markdown → self-contained HTML


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}table{border-collapse:collapse;margin:.8em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-style:italic;color:#555}
code{background:#f4f4f4;padding:0 3px}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}"""


_ESCAPE = re.compile(r"\\([\\`*_\[\]()!|<>&#~{}+.-])")


def _inline(text: str) -> str:
    """One line of the report's markdown as HTML: escaped characters stay literal, `code` and *em*."""
    literal: list[str] = []

    def hold(m: re.Match) -> str:
        literal.append(m.group(1))
        return f"\ue000{len(literal) - 1}\ue001"

    out = html.escape(_ESCAPE.sub(hold, text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*([^*]+)\*", r"<em>\1</em>", out)
    return re.sub("\ue000(\\d+)\ue001", lambda m: html.escape(literal[int(m.group(1))]), out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))]


def to_html(md: str, figures: Mapping[str, Path]) -> str:
    """The report's markdown as one self-contained HTML page: headings, paragraphs, lists, pipe
    tables as HTML tables, and its figures embedded as data URIs (only the subset of markdown the
    report writes).

    ``figures`` maps each link the report wrote (``figures/x.png``) to the file it drew: only those
    are read and embedded. A figure line naming anything else is shown as text; no file named by
    the markdown (and so by data) is ever read."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if m := re.match(r"(#{1,6}) (.*)", line):
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
            i += 1
        elif (m := re.fullmatch(r"!\[(.*)\]\(([^()\s]*)\)", line.strip())) and m.group(2) in figures:
            data = base64.b64encode(Path(figures[m.group(2)]).read_bytes()).decode("ascii")
            alt = html.escape(_ESCAPE.sub(r"\1", m.group(1)))
            body.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_inline(m.group(1))}</figcaption></figure>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head, rows = _cells(block[0]), [_cells(b) for b in block[2:]]
            body.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in head) + "</tr></thead><tbody>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
                        + "</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = [line]  # (a figure line naming no figure of this report is shown as text)
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"(#{1,6} |\||- |!\[)", lines[i]):
                para.append(lines[i])
                i += 1
            if not re.fullmatch(r"\*[^*]+\*", " ".join(para).strip()):  # a figure's caption: already under it
                body.append(f"<p>{_inline(' '.join(para))}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ltrbench report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def summary_of(report: Report) -> str:
    """What the CLI prints: where the report went and what it holds."""
    lines = [f"report: {report.markdown}", f"        {report.html} (self-contained)",
             f"figures ({len(report.figures)}): " + ", ".join(p.name for p in report.figures),
             f"tables ({len(report.csvs)} CSV): {report.folder / 'tables'}"]
    lines += [f"left out: {n}" for n in report.notes]
    return "\n".join(lines)

