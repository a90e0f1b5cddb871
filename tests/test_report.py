"""`report`: report.md, a self-contained report.html showing every figure, PNG figures and CSV tables
from a results folder of the tiny built-in world (several seeds, so that error bars exist)."""
from __future__ import annotations

import base64
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

import ltrbench
from conftest import TINY, run_cli, tiny_set
from ltrbench import cli
from ltrbench.errors import LtrBenchError
from ltrbench.report import build_report, to_html
from ltrbench.results import load_results
from test_conformance import FAST

METHODS = ["baseline", "zeroshot", "vlltr"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    ltrbench.run(ltrbench.Request(METHODS, "synthetic_lt", seeds=[0, 1], overrides=FAST), ltrbench.ExecOptions(out=out, progress=False))
    return out


@pytest.fixture(scope="module")
def report(results):
    return build_report(results, baseline="baseline")


def test_report_writes_markdown_html_figures_and_csv(report, results):
    assert report.markdown.is_file() and report.html.is_file() and report.folder == results / "report"
    names = {p.name for p in report.figures}
    assert names == {f"{k}__synthetic_lt.png"
                     for k in ("gain", "shots", "shifted", "accuracy_vs_count", "corpus", "training")}
    for p in report.figures:
        img = imread(p)
        assert img.shape[0] >= 450 and img.shape[1] >= 800, p.name  # 100 dpi: at least 8 × 4.5 inches
        assert img[..., :3].std() > 0.05, p.name  # something is drawn
    md = report.markdown.read_text()
    for p in report.figures:
        assert f"](figures/{p.name})" in md
    assert not report.notes, report.notes
    assert "### Top-1 accuracy, paper convention" in md and "| baseline " in md and "Text corpus" in md
    # two seeds: every cell of ours has its t interval; the long-tail metrics and SADE's shifts are there
    assert re.search(r"\| baseline +\| synthetic_lt \| mini-clip +\| 2 +\| \d+\.\d ± \d+\.\d \[\d+\.\d, \d+\.\d\]", md)
    assert "### Long-tail metrics" in md and "macro_f1" in md and "ece_few" in md
    assert "under shifted test class distributions (SADE)" in md and "(oracle prior correction)" in md
    assert "interval bars" in md


def test_the_html_is_self_contained_and_shows_every_figure(report):
    page = report.html.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == len(report.figures)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources if s.startswith("data:image/png;base64,")}
    assert embedded == {p.read_bytes() for p in report.figures}  # every figure, as a data URI
    assert "figures/" not in page.replace("figures/training", "")  # no link to a file beside it
    assert page.count("<table>") >= 3 and "<th>overall</th>" in page
    assert "<figcaption>" in page and page.startswith("<!DOCTYPE html>")


def test_csv_tables_hold_the_numbers(report, results):
    paper = pd.read_csv(report.folder / "tables" / "summary__synthetic_lt__paper.csv")
    df = load_results(results)
    base = df[df["method"] == "baseline"]
    row = paper[paper["method"] == "baseline"].iloc[0]
    assert row["seeds"] == 2
    assert row["overall_mean"] == pytest.approx(base["overall"].mean())
    assert row["few_std"] == pytest.approx(base["few"].std(ddof=1))
    corpus = pd.read_csv(report.folder / "tables" / "corpus__synthetic_lt.csv")
    assert list(corpus["per class"])[1].startswith("kept as anchors")
    assert (corpus["max"] >= corpus["min"]).all() and corpus.loc[1, "max"] <= corpus.loc[0, "max"]


def test_without_the_baseline_or_the_cache_figures_are_left_out_and_said_so(results, tmp_path):
    shutil.copytree(results / "runs", tmp_path / "out" / "runs")
    rep = build_report(tmp_path / "out", baseline="nosuchmethod", cache=tmp_path / "empty-cache")
    names = {p.name for p in rep.figures}
    assert names == {"shots__synthetic_lt.png", "shifted__synthetic_lt.png", "accuracy_vs_count__synthetic_lt.png"}
    notes = " ".join(rep.notes)
    assert "'nosuchmethod'" in notes and "corpus figure" in notes and "training curves" in notes
    assert "Left out:" in rep.markdown.read_text()


def test_bad_input_is_a_user_error(tmp_path, results):
    with pytest.raises(LtrBenchError, match="No result JSONs"):
        build_report(tmp_path / "nothing")
    with pytest.raises(LtrBenchError, match="has results on synthetic_lt"):
        build_report(results, dataset="places_lt")
    assert cli.main(["report", "--out", str(tmp_path / "nothing")]) == 2


def test_cli_report_prints_where_it_went(results, capsys):
    assert cli.main(["report", "--out", str(results), "--dataset", "synthetic_lt"]) == 0
    printed = capsys.readouterr().out
    assert str(results / "report" / "report.html") in printed and "figures (6)" in printed


def test_markdown_to_html_subset(tmp_path):
    (tmp_path / "figures").mkdir()
    png = b"\x89PNG fake"
    (tmp_path / "figures" / "a.png").write_bytes(png)
    md = ("# Title\n\nSome `code` & <b>text</b>.\n\n| a | b |\n|:--|:--|\n| 1 | x<y |\n\n- one\n- two\n\n"
          "![A caption (with parens)](figures/a.png)\n\n*A caption (with parens).*\n")
    page = to_html(md, {"figures/a.png": tmp_path / "figures" / "a.png"})
    assert "<h1>Title</h1>" in page and "<code>code</code> &amp; &lt;b&gt;text&lt;/b&gt;." in page
    assert "<td>x&lt;y</td>" in page and "<li>two</li>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert page.count("A caption (with parens)") == 2  # alt and figcaption; the italic line is not repeated


def test_gain_is_method_minus_baseline_per_class(results):
    from ltrbench.report import _series
    from ltrbench.results import read_results

    series = {s.name: s for s in _series(read_results(results))}
    v, b = series["vlltr"], series["baseline"]
    per_seed = [np.array(r["per_class_accuracy"], float) for r in v.records]
    assert np.allclose(v.per_class(), np.mean(per_seed, axis=0), equal_nan=True)
    assert len(v.seeds) == len(b.seeds) == 2


@pytest.mark.slow
def test_cli_table_4_on_the_built_in_world_then_diff_and_report(tmp_path):
    out = tmp_path / "out"
    r = run_cli("--table", "4", "--dataset", "synthetic_lt", "--out", str(out), "--quiet", *tiny_set(FAST[len(TINY):]))
    assert r.returncode == 0, r.stderr[-3000:]
    d = run_cli("diff", "--table", "4", "--out", str(out), "--strict")
    assert d.returncode == 0, d.stdout[-2000:] + d.stderr[-2000:]
    assert "order of rows on synthetic_lt" in d.stdout and "Kendall's τ" in d.stdout
    assert "Only the order of rows is comparable" in d.stdout
    rep = run_cli("report", "--out", str(out))
    assert rep.returncode == 0, rep.stderr[-2000:]
    md = (out / "report" / "report.md").read_text()
    assert "Table 4: ablations: order of rows on synthetic_lt" in md
    assert (out / "report" / "tables" / "table4__order__synthetic_lt.csv").is_file()
    assert len(list((out / "report" / "figures").glob("*.png"))) >= 4
