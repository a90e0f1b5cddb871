"""The paper's whole tables and the diff: every number of Tables 1–4 and 8–10 as the paper prints it
(read back against docs/algorithms.md#paper-tables), provenance, Δ only where the shot conventions agree, `diff`
with its exit status, and the order comparison on a data set without paper numbers."""
from __future__ import annotations

import itertools
import re

import pandas as pd
import pytest

from conftest import REPO
from ltrbench import cli
from ltrbench.errors import ConfigError
from ltrbench.results import load_results, write_result
from ltrbench.tables import (available_tables, diff_frame, load_paper_numbers, load_table, order_comparison,
                             render_diff, render_table)

ALGORITHMS = REPO / "docs" / "algorithms.md"  # its "## Paper tables" section
TABLES = (1, 2, 3, 4, 8, 9, 10)
METRIC_HEADERS = {"Overall": "overall", "Acc": "overall", "Many": "many", "Medium": "medium", "Few": "few"}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def paper_tables_of_the_docs() -> dict[int, list[dict]]:
    """The transcription in docs/algorithms.md#paper-tables: per table, per row, its backbone (when
    given) and numbers."""
    text = ALGORITHMS.read_text()
    start = text.index("\n## Paper tables\n")
    sec = text[start:text.index("\n## ", start + 1)]
    out: dict[int, list[dict]] = {}
    for m in re.finditer(r"\*\*Table (\d+):[^\n]*\n+((?:\|[^\n]*\n)+)", sec):
        lines = m.group(2).strip().splitlines()
        head = _cells(lines[0])
        rows = []
        for line in lines[2:]:
            cells = dict(zip(head, _cells(line)))
            nums = {METRIC_HEADERS[h]: (None if v == "-" else float(v)) for h, v in cells.items() if h in METRIC_HEADERS}
            rows.append({"backbone": cells.get("Backbone", "").replace("\\*", "*"), "paper": nums})
        out[int(m.group(1))] = rows
    return out


def rendered_rows(markdown: str) -> list[dict]:
    """The first markdown table of ``markdown`` as dicts of cell strings."""
    text = markdown[markdown.index("\n|") + 1:]
    lines = list(itertools.takewhile(lambda ln: ln.startswith("|"), text.splitlines()))
    head = _cells(lines[0])
    return [dict(zip(head, _cells(ln))) for ln in lines[2:]]


def _value(cell: str) -> float | None:
    cell = cell.rstrip("†")
    return None if cell == "—" else float(cell)


@pytest.mark.parametrize("number", TABLES)
def test_tables_command_with_no_results_shows_every_paper_number(number, tmp_path, capsys):
    want = paper_tables_of_the_docs()[number]
    assert cli.main(["tables", "--table", str(number), "--out", str(tmp_path / "none")]) == 0
    got = rendered_rows(capsys.readouterr().out)
    assert len(got) == len(want), f"table {number}: {len(got)} rows printed, the docs have {len(want)}"
    for i, (g, w) in enumerate(zip(got, want), 1):
        assert g["#"] == str(i)
        printed = {m: _value(g[f"{m} paper"]) for m in ("overall", "many", "medium", "few") if f"{m} paper" in g}
        expected = {m: w["paper"].get(m) for m in printed}
        assert printed == expected, f"table {number} row {i}"
        assert set(w["paper"]) <= set(printed)
        if w["backbone"]:
            assert g["backbone"] == w["backbone"], f"table {number} row {i}"


def test_every_table_is_specified_and_the_csv_holds_the_paper_counts():
    assert available_tables() == list(TABLES)
    numbers = load_paper_numbers()
    cited = numbers[numbers["provenance"] == "cited"]
    assert len(cited) == 88  # the count of numbers the paper cites from other papers
    assert (cited["source"] != "").all() and (cited["ref"] != "").all()
    per_table = {t: len(g) for t, g in numbers.groupby("table")}
    assert per_table == {1: 69, 2: 60, 3: 23, 4: 7, 8: 36, 9: 20, 10: 24}


@pytest.mark.parametrize("number", TABLES)
def test_provenance_and_conventions(number):
    spec = load_table(number)
    for r in spec.rows:
        starred = r.printed_backbone.endswith("*")
        assert r.runnable == (r.provenance == "run") == (starred or number >= 4), (number, r.index)
        for m, n in r.paper.items():
            if m == "overall":
                assert n.convention is None
            else:  # the paper's own runs: the VL-LTR code's buckets; cited rows: Kang et al.'s lineage
                assert n.convention == ("paper" if r.runnable else "decoupling"), (number, r.index, m)
        assert r.split == ("val" if r.dataset == "inat2018" else "test")
    assert [r.index for r in spec.rows] == list(range(1, len(spec.rows) + 1))


def test_the_384_row_is_a_runnable_spec():
    spec = load_table(3)
    (row,) = [r for r in spec.rows if r.label == "VL-LTR-384"]
    assert row.runnable and row.input_size == 384 and row.backbone == "ViT-B-16"
    assert "data.image_size=384" in row.overrides
    assert spec.variant(row) == "t3r23"


def test_a_run_spec_must_match_the_printed_rows(tmp_path):
    good = (REPO / "configs" / "tables" / "table4.yaml").read_text()
    (tmp_path / "table4.yaml").write_text(good.replace("  - {row: 7,", "  - {row: 8,"))
    with pytest.raises(ConfigError, match=r"row 7 .* has no entry under `runs:`"):
        load_table(4, folder=tmp_path)
    (tmp_path / "table1.yaml").write_text((REPO / "configs" / "tables" / "table1.yaml").read_text()
                                          + "  - {row: 2, method: baseline}\n")
    with pytest.raises(ConfigError, match="cited from"):
        load_table(1, folder=tmp_path)


# --------------------------------------------------------------------------- results written by the test


def fake_result(out, method: str, variant: str, dataset: str, seed: int, overall: float,
                buckets: dict[str, dict[str, float]] | None = None):
    """A result record as ``run`` writes it, with chosen metrics (the diff's input, not a model's)."""
    buckets = buckets or {}
    metrics = {conv: {"overall": overall, **buckets.get(conv, {"many": None, "medium": None, "few": None})}
               for conv in ("paper", "decoupling")}
    rec = {"method": method, "variant": variant, "dataset": dataset, "backbone": "RN50", "seed": seed,
           "metrics": metrics, "per_class_accuracy": [overall], "train_counts": [100], "config": {},
           "wall_time_s": 0.0, "git_revision": None, "versions": {}, "device": "cpu", "eval_split": "test",
           "run_key": f"{variant or method}{seed}{dataset}"}
    write_result(out, rec)


def write_table(out, number: int, dataset: str | None = None, shift: float = 0.4, seeds=(0,), skip=(),
                value=None):
    spec = load_table(number)
    for r in spec.runs:
        if r.index in skip:
            continue
        for s in seeds:
            v = value(r) if value else r.paper["overall"].value + shift + 0.2 * s
            buckets = {"paper": {m: r.paper[m].value + shift for m in ("many", "medium", "few") if m in r.paper},
                       "decoupling": {m: r.paper[m].value - 5 for m in ("many", "medium", "few") if m in r.paper}}
            fake_result(out, r.method, spec.variant(r), dataset or r.dataset, s, v, buckets)
    return spec


def test_diff_strict_fails_with_no_results(tmp_path, capsys):
    assert cli.main(["diff", "--out", str(tmp_path / "empty"), "--strict"]) == 1
    printed = capsys.readouterr().out
    assert printed.count("missing") > 50 and "Table 10" in printed
    assert cli.main(["diff", "--out", str(tmp_path / "empty")]) == 0  # without --strict: a report


def test_diff_strict_passes_within_tolerance_and_fails_outside_or_missing(tmp_path, capsys):
    write_table(tmp_path / "ok", 4, seeds=(0, 1))
    assert cli.main(["diff", "--table", "4", "--out", str(tmp_path / "ok"), "--strict"]) == 0
    printed = capsys.readouterr().out
    assert "| 70.6 ± 0.1 | 70.1    | +0.5 | within" in printed and "within" in printed  # row 1: 70.5, 70.7 against 70.1
    assert "missing" not in printed.split("numbers:")[0]

    write_table(tmp_path / "far", 4, value=lambda r: r.paper["overall"].value + (1.5 if r.index == 3 else 0.0))
    assert cli.main(["diff", "--table", "4", "--out", str(tmp_path / "far"), "--strict"]) == 1
    assert "⚠ outside" in capsys.readouterr().out
    assert cli.main(["diff", "--table", "4", "--out", str(tmp_path / "far"), "--strict", "--tolerance", "2"]) == 0
    capsys.readouterr()

    write_table(tmp_path / "gap", 4, skip=(5,))
    assert cli.main(["diff", "--table", "4", "--out", str(tmp_path / "gap"), "--strict"]) == 1
    assert "1 missing" in capsys.readouterr().out


def test_diff_compares_buckets_under_the_paper_numbers_convention(tmp_path):
    spec = write_table(tmp_path, 1)
    d = diff_frame(spec, load_results(tmp_path))
    buckets = d[d["metric"] != "overall"]
    assert len(buckets) == 7 * 3 and (buckets["convention"] == "paper").all()
    # ours under the decoupling convention is 5 points below: the diff must not have used it
    assert buckets["delta"].round(6).eq(0.4).all() and (buckets["status"] == "within").all()


def test_table_shows_delta_only_where_conventions_agree(tmp_path):
    spec = write_table(tmp_path, 1)
    df = load_results(tmp_path)
    paper = {r["#"]: r for r in rendered_rows(render_table(spec, df, "paper"))}
    dec = {r["#"]: r for r in rendered_rows(render_table(spec, df, "decoupling"))}
    assert paper["16"]["many Δ"] == "+0.4" and paper["16"]["overall Δ"] == "+0.4"
    assert dec["16"]["many Δ"] == "—" and dec["16"]["many paper"] == "74.4†" and dec["16"]["overall Δ"] == "+0.4"
    assert dec["16"]["many ours"] == "69.4"  # ours under the decoupling convention, shown but not compared
    assert paper["1"]["many paper"] == "65.9†" and dec["1"]["many paper"] == "65.9"  # cited: decoupling
    assert paper["1"]["overall ours"] == "—" and paper["1"]["from"] == "cited [26]"


def test_order_comparison_on_a_data_set_without_paper_numbers(tmp_path, capsys):
    # ours: the paper's numbers − 20, with rows 1 and 7 (70.1 and 69.7, neighbours in the paper's
    # order) swapped: one flipped pair of 21
    spec = load_table(4)
    paper = {r.index: r.paper["overall"].value for r in spec.runs}
    ours = {**{i: v - 20 for i, v in paper.items()}, 1: paper[7] - 20, 7: paper[1] - 20}
    write_table(tmp_path, 4, dataset="synthetic_lt", value=lambda r: ours[r.index])
    (o,) = order_comparison(spec, load_results(tmp_path), "synthetic_lt")
    assert o.flips == ((1, 7),) and o.tau == pytest.approx(19 / 21) and o.rows == tuple(range(1, 8))

    assert cli.main(["diff", "--table", "4", "--out", str(tmp_path), "--strict"]) == 0  # order alone never fails
    printed = capsys.readouterr().out
    assert "order of rows on synthetic_lt" in printed and "Only the order of rows is comparable" in printed
    assert "Kendall's τ" in printed and "0.90" in printed and "1 of 21" in printed
    assert "paper #1 CLIP weights + CVLP w/ L_dis + LGR + AnSS R-50* 70.1 > #7" in printed
    assert "imagenet_lt" not in printed.split("Only the order")[0]  # no value comparison against the paper


def test_order_comparison_groups_rows_by_the_papers_data_set(tmp_path):
    spec = write_table(tmp_path, 10, dataset="synthetic_lt", value=lambda r: 50.0 + r.index)
    orders = order_comparison(spec, load_results(tmp_path), "synthetic_lt")
    overall = {o.paper_dataset: o for o in orders if o.metric == "overall"}
    assert set(overall) == {"imagenet_lt", "places_lt"}
    assert overall["imagenet_lt"].rows == (1, 2, 3) and overall["imagenet_lt"].tau == pytest.approx(1.0)
    rep = render_diff(spec, load_results(tmp_path))
    assert rep.failures == 0 and rep.values.empty


def test_order_comparison_counts_missing_rows_as_failures(tmp_path):
    spec = write_table(tmp_path, 4, dataset="synthetic_lt", skip=(2,))
    rep = render_diff(spec, load_results(tmp_path))
    assert rep.failures == 1 and "missing rows" in rep.markdown


def test_results_of_an_older_numbering_do_not_fill_cited_rows(tmp_path):
    # a result named t1r1 whose method is not the row's (row 1 is cited): never shown as ours
    fake_result(tmp_path, "ncm", "t1r1", "imagenet_lt", 0, 49.0)
    rows = rendered_rows(render_table(load_table(1), load_results(tmp_path)))
    assert rows[0]["overall ours"] == "—"


def test_paper_numbers_frame_is_plain_data():
    numbers = load_paper_numbers()
    assert list(numbers.columns)[:4] == ["table", "row", "label", "backbone"]
    assert pd.api.types.is_float_dtype(numbers["value"])


def test_a_missing_metric_is_not_counted_as_a_replicate(tmp_path):
    """Three seeds, few-shot missing (NaN) on one of them: the few cell is the mean of the two it has
    and says so; overall keeps all three."""
    from ltrbench.tables import summary_table

    for seed, few in ((0, 10.0), (1, 20.0), (2, None)):
        fake_result(tmp_path, "m", "", "d", seed, 50.0 + seed,
                    {"paper": {"many": 60.0, "medium": 40.0, "few": few}})
    table = summary_table(load_results(tmp_path), "paper", ci="none")
    row = next(line for line in table.splitlines() if line.startswith("| m "))
    assert "15.0 ± 7.1 (2 of 3 seeds)" in row and "51.0 ± 1.0 |" in row
