"""Numbers a reviewer can trust (issue 20): the long-tail metrics against scikit-learn/scipy, the
stratified bootstrap's coverage and width, paired comparisons, Holm, SADE's shifted test
distributions, and the commands that show them (tables, diff, compare) on records with predictions."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from scipy import special
from scipy.stats import gmean, hmean

from ltrbench import cli
from ltrbench.metrics import (METRIC_NAMES, SHIFTS, Predictions, ece_bin, per_class_accuracy, shift_name,
                              shifted_accuracy, summarize, shifted_prior)
from ltrbench.results import load_results, write_result
from ltrbench.stats import bootstrap, evaluation, holm, paired, paired_bootstrap, t_interval
from ltrbench.tables import load_table

COUNTS = np.array([300, 200, 150, 100, 80, 50, 30, 20, 10, 5])


def simulate(rng, per_class: int, accuracy: np.ndarray, counts=COUNTS, sharp: float = 3.0):
    """Scores of a classifier whose class-c images are right with probability ``accuracy[c]``."""
    c = len(counts)
    labels = np.repeat(np.arange(c), per_class)
    right = rng.random(len(labels)) < accuracy[labels]
    wrong = (labels + rng.integers(1, c, len(labels))) % c
    target = np.where(right, labels, wrong)
    scores = rng.normal(size=(len(labels), c))
    scores[np.arange(len(labels)), target] += sharp + 5.0  # arg max = target
    return scores, labels


# --------------------------------------------------------------------------- metrics


def test_metrics_agree_with_scikit_learn_and_scipy():
    from sklearn.metrics import balanced_accuracy_score, f1_score, log_loss

    rng = np.random.default_rng(1)
    scores, labels = simulate(rng, 30, np.linspace(0.3, 0.9, 10), sharp=-4.0)  # soft scores: NLL is finite
    pred = scores.argmax(1)
    row = summarize(None, labels, COUNTS, scores=scores)["metrics"]["paper"]
    pca = per_class_accuracy(pred, labels, 10)
    assert row["overall"] == pytest.approx(100 * np.mean(pred == labels))
    assert row["mean_class"] == pytest.approx(100 * balanced_accuracy_score(labels, pred))
    assert row["macro_f1"] == pytest.approx(100 * f1_score(labels, pred, average="macro"))
    assert row["nll"] == pytest.approx(log_loss(labels, special.softmax(scores, 1), labels=range(10)))
    assert row["harmonic"] == pytest.approx(hmean(pca))
    assert row["geometric"] == pytest.approx(gmean(pca))
    assert row["worst"] == pytest.approx(pca.min())
    # ECE, 15 equal-width bins (lo, hi], written out as the definition
    prob = special.softmax(scores, 1)
    conf, hit = prob.max(1), (pred == labels)
    ece = sum(abs(hit[b].mean() - conf[b].mean()) * b.mean()
              for k in range(15) if (b := (conf > k / 15) & (conf <= (k + 1) / 15) | ((k == 0) & (conf == 0))).any())
    assert row["ece"] == pytest.approx(100 * ece)
    few = np.isin(labels, np.nonzero(COUNTS <= 20)[0])
    ece_few = sum(abs(hit[few & b].mean() - conf[few & b].mean()) * (few & b).sum() / few.sum()
                  for k in range(15) if (few & (b := ece_bin(conf) == k)).any())
    assert row["ece_few"] == pytest.approx(100 * ece_few)
    assert set(row) == set(METRIC_NAMES)


def test_a_class_at_zero_makes_harmonic_and_geometric_zero_and_missing_scores_leave_nll_missing():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 0])  # class 2 at 0 %
    row = summarize(pred, labels, np.array([200, 50, 5]))["metrics"]["paper"]
    assert row["harmonic"] == 0.0 and row["geometric"] == 0.0 and row["worst"] == 0.0
    assert row["nll"] is None and row["ece"] is None  # no scores: missing, not 0


def test_a_record_written_before_the_new_metrics_reads_with_them_missing():
    old = {"method": "m", "variant": "", "dataset": "d", "backbone": "b", "seed": 0, "run_key": "k",
           "metrics": {c: {"overall": 50.0, "many": 60.0, "medium": 40.0, "few": None}
                       for c in ("paper", "decoupling")}}
    row = load_results([old]).iloc[0]
    assert row["overall"] == 50.0 and row["many"] == 60.0 and np.isnan(row["few"])
    for m in ("mean_class", "harmonic", "geometric", "worst", "macro_f1", "nll", "ece", "ece_few", "overall_lo"):
        assert np.isnan(row[m]), m


# --------------------------------------------------------------------------- the bootstrap


def test_bootstrap_interval_covers_a_known_accuracy_95_percent_of_the_time():
    """Simulated predictions with known per-class accuracy: the stratified bootstrap's interval of
    overall accuracy covers the expected accuracy of the test set in 93–97 % of 400 repetitions."""
    rng = np.random.default_rng(2020)
    accuracy = np.linspace(0.4, 0.9, 10)
    truth = 100 * accuracy.mean()  # every class has 40 images
    hits = 0
    for rep in range(400):
        scores, labels = simulate(rng, 40, accuracy)
        p = Predictions.from_scores(scores, labels, COUNTS)
        lo, hi = bootstrap(p, replicates=1000, seed=rep)["paper"]["overall"]
        hits += lo <= truth <= hi
    assert 0.93 <= hits / 400 <= 0.97, hits / 400


def test_intervals_narrow_as_the_test_set_grows_and_are_seeded():
    rng = np.random.default_rng(0)
    widths = []
    for per_class in (10, 100, 1000):
        scores, labels = simulate(rng, per_class, np.full(10, 0.7))
        p = Predictions.from_scores(scores, labels, COUNTS)
        iv = bootstrap(p, replicates=1000, seed=0)["paper"]
        widths.append([iv[m][1] - iv[m][0] for m in ("overall", "few", "nll")])
        assert iv == bootstrap(p, replicates=1000, seed=0)["paper"]  # same seed, same interval
    widths = np.array(widths)
    assert (np.diff(widths, axis=0) < 0).all(), widths
    # width ~ 1/sqrt(n): ten times the images, about a third of the width
    assert 0.2 < widths[2, 0] / widths[1, 0] < 0.5


def test_resampled_correct_counts_are_binomial_per_class():
    """Stratified resampling of one class's 0/1 correctness is Binomial(n_c, acc_c): mean and variance."""
    from ltrbench.stats import replicate_sums

    labels = np.repeat([0, 1], [50, 20])
    pred = labels.copy()
    pred[:15] = 1  # class 0: 35 of 50 right
    p = Predictions(labels, pred, np.array([100, 10]))
    sums = np.concatenate([chunk[0] for chunk in replicate_sums([p.design()], labels, 20000, seed=3)])
    k0 = sums[:, 0]
    assert k0.mean() == pytest.approx(35, abs=0.1)
    assert k0.var() == pytest.approx(50 * 0.7 * 0.3, rel=0.05)
    assert (sums[:, 1] == 20).all()  # class 1 always right


def test_t_interval_over_seeds():
    lo, hi = t_interval([60.0, 62.0, 61.0])
    assert (lo + hi) / 2 == pytest.approx(61.0)
    assert hi - lo == pytest.approx(2 * 4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert all(np.isnan(t_interval([60.0])))


# --------------------------------------------------------------------------- paired comparisons


def test_a_method_against_itself_gives_delta_zero_and_p_one():
    rng = np.random.default_rng(5)
    runs = [Predictions.from_scores(*simulate(rng, 20, np.full(10, 0.6)), COUNTS) for _ in range(3)]
    res = paired(runs, runs, METRIC_NAMES)
    for m, r in res.items():
        assert r.delta == 0.0 and r.p_value == 1.0 and r.low == 0.0 and r.high == 0.0, m
        assert r.t_p_value == 1.0


def test_paired_comparison_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(6)
    acc = np.full(10, 0.6)
    better, worse, same = [], [], []
    for _ in range(3):
        scores, labels = simulate(rng, 60, acc)
        base = Predictions.from_scores(scores, labels, COUNTS)
        worse.append(base)
        fixed = base.pred.copy()
        wrong = np.nonzero(fixed != labels)[0]
        fixed[wrong[: len(wrong) // 3]] = labels[wrong[: len(wrong) // 3]]  # a third of the errors fixed
        better.append(Predictions(labels, fixed, COUNTS))
        s2, _ = simulate(rng, 60, acc)
        same.append(Predictions(labels, np.where(rng.random(len(labels)) < 0.6, labels, (labels + 1) % 10), COUNTS))
    r = paired_bootstrap(better, worse, "overall")
    assert r.delta > 0 and r.low > 0 and r.p_value < 0.01 and r.better == "A"
    assert r.t_p_value < 0.05  # three seeds: the paired t-test over seeds too
    null = paired_bootstrap(same, [Predictions(p.labels, p.pred, COUNTS) for p in worse], "overall")
    assert null.low < 0 < null.high or null.p_value > 0.01


def test_holm_adjusts_step_down():
    adj = holm([0.01, 0.04, 0.03, np.nan, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4): 0.04, 0.09, max(0.09, 0.08), 0.2
    assert np.allclose(adj[[0, 2, 1, 4]], [0.04, 0.09, 0.09, 0.2]) and np.isnan(adj[3])


def test_different_test_images_are_refused():
    from ltrbench.errors import LtrBenchError

    a = Predictions(np.array([0, 1]), np.array([0, 1]), np.array([10, 5]))
    b = Predictions(np.array([1, 0]), np.array([0, 1]), np.array([10, 5]))
    with pytest.raises(LtrBenchError, match="same test images"):
        paired_bootstrap([a], [b], "overall")


# --------------------------------------------------------------------------- shifted test distributions


def test_shifted_accuracy_is_q_weighted_per_class_accuracy_and_uniform_is_mean_class():
    rng = np.random.default_rng(7)
    scores, labels = simulate(rng, 20, np.linspace(0.2, 0.95, 10))
    rec = evaluation(scores, labels, COUNTS)
    pca = json.loads(json.dumps(rec["per_class_accuracy"]))  # as stored
    for direction, ratio in SHIFTS:
        q = shifted_prior(COUNTS, ratio, direction == "backward")
        assert q.sum() == pytest.approx(1.0)
        want = float(np.dot(q, pca))
        got = shifted_accuracy(pca, COUNTS, ratio, backward=direction == "backward")
        assert abs(got - want) < 1e-9
        assert abs(rec["shifted"][shift_name(direction, ratio)]["method"] - want) < 1e-9
    assert abs(shifted_accuracy(pca, COUNTS, 1) - rec["metrics"]["paper"]["mean_class"]) < 1e-9
    q = shifted_prior(COUNTS, 50)
    assert q[0] / q[-1] == pytest.approx(50) and (np.diff(q) < 0).all()  # COUNTS descend: forward = head first
    assert shifted_prior(COUNTS, 50, backward=True)[-1] / shifted_prior(COUNTS, 50, backward=True)[0] == pytest.approx(50)


def test_oracle_prior_correction_helps_a_classifier_biased_to_the_training_prior():
    """Scores = balanced evidence + log training prior (what cross-entropy on long-tailed data
    learns): the oracle that knows q removes the training prior and adds q's."""
    rng = np.random.default_rng(8)
    c = len(COUNTS)
    labels = np.repeat(np.arange(c), 100)
    evidence = rng.normal(size=(len(labels), c))
    evidence[np.arange(len(labels)), labels] += 1.0
    scores = evidence + np.log(COUNTS / COUNTS.sum())
    rec = evaluation(scores, labels, COUNTS)
    back = rec["shifted"]["backward 50"]
    assert back["oracle"] > back["method"] + 5
    assert rec["shifted"]["uniform"]["oracle"] > rec["shifted"]["uniform"]["method"]


# --------------------------------------------------------------------------- the commands


def write_runs(out, method: str, seeds, accuracy, variant: str = "", dataset: str = "synthetic_lt", shift=0):
    """Result records as `run` writes them, from simulated scores (the same images for every
    method and seed: one fixed label vector)."""
    for seed in seeds:
        rng = np.random.default_rng(1000 * seed + shift)
        scores, labels = simulate(rng, 30, accuracy)
        rec = {"method": method, "variant": variant, "dataset": dataset, "backbone": "mini-clip", "seed": seed,
               "config": {}, "wall_time_s": 0.0, "git_revision": None, "versions": {}, "device": "cpu",
               "eval_split": "test", "run_key": f"{method}{variant}{seed}{dataset}",
               "train_counts": COUNTS.tolist(), **evaluation(scores, labels, COUNTS, seed=seed)}
        write_result(out, rec)


def test_result_records_carry_intervals_and_every_metric(tmp_path):
    write_runs(tmp_path, "baseline", [0], np.full(10, 0.6))
    (path,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(path.read_text())
    for conv in ("paper", "decoupling"):
        assert set(rec["metrics"][conv]) == set(METRIC_NAMES)
        for m in ("overall", "many", "medium", "few"):
            lo, hi = rec["intervals"][conv][m]
            assert lo <= rec["metrics"][conv][m] <= hi
    assert len(rec["predictions"]["labels"]) == len(rec["predictions"]["confidence"]) == 300
    again = Predictions.from_record(rec).point()  # from the stored predictions (6 significant digits)
    for conv, row in rec["metrics"].items():
        assert again[conv] == pytest.approx(row, rel=1e-4), conv


def test_tables_on_three_seeds_show_mean_std_and_intervals(tmp_path, capsys):
    spec = load_table(1)
    for r in spec.runs:
        write_runs(tmp_path, r.method, [0, 1, 2], np.full(10, 0.5 + 0.02 * r.index), variant=spec.variant(r))
    assert cli.main(["tables", "--table", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 16 "))
    assert re.search(r"\| \d+\.\d ± \d+\.\d \[\d+\.\d, \d+\.\d\] +\|", row), row
    assert "95 % t interval over seeds" in out
    assert cli.main(["tables", "--table", "1", "--out", str(tmp_path), "--ci", "none"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 16 "))
    assert "[" not in row and "±" in row
    assert cli.main(["tables", "--table", "1", "--out", str(tmp_path), "--ci", "bootstrap"]) == 0
    assert re.search(r"± \d+\.\d \[\d+\.\d, \d+\.\d\]", capsys.readouterr().out)


def test_tables_against_marks_significant_cells_after_holm(tmp_path, capsys):
    write_runs(tmp_path, "baseline", [0, 1, 2], np.full(10, 0.3))
    write_runs(tmp_path, "vlltr", [0, 1, 2], np.full(10, 0.9), shift=1)
    write_runs(tmp_path, "knn", [0, 1, 2], np.full(10, 0.3), shift=2)
    assert cli.main(["tables", "--out", str(tmp_path), "--against", "baseline", "--metric", "overall",
                     "--metric", "nll"]) == 0
    out = capsys.readouterr().out
    vlltr = next(line for line in out.splitlines() if line.startswith("| vlltr"))
    base = next(line for line in out.splitlines() if line.startswith("| baseline"))
    assert vlltr.count("▲") == 1 and "▼" in vlltr  # higher accuracy, lower NLL
    assert "▲" not in base and "▼" not in base
    assert "Holm's correction over the 4 cells compared" in out
    assert "under shifted test class distributions" in out


def test_compare_prints_delta_interval_and_p(tmp_path, capsys):
    write_runs(tmp_path, "baseline", [0, 1, 2], np.full(10, 0.5))
    write_runs(tmp_path, "vlltr", [0, 1, 2], np.full(10, 0.8), shift=1)
    assert cli.main(["compare", "baseline", "baseline", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for m in ("overall", "many", "medium", "few"):
        line = next(x for x in out.splitlines() if x.startswith(f"| {m} "))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == "+0.0" and cells[4] == "[+0.0, +0.0]" and cells[5] == "1" and cells[6] == "1", cells
    assert cli.main(["compare", "vlltr", "baseline", "--metric", "few", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| few "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert float(cells[3]) > 0 and re.fullmatch(r"\[\+\d+\.\d, \+\d+\.\d\]", cells[4]) and float(cells[5]) < 0.05
    assert "seeds 0, 1, 2 (3 paired)" in out
    assert (tmp_path / "tables" / "compare__vlltr__baseline.md").is_file()
    assert cli.main(["compare", "nosuch", "baseline", "--out", str(tmp_path)]) == 2
    assert "no runs of nosuch" in capsys.readouterr().err


def test_compare_refuses_records_without_predictions(tmp_path, capsys):
    write_runs(tmp_path, "baseline", [0], np.full(10, 0.5))
    write_runs(tmp_path, "vlltr", [0], np.full(10, 0.5), shift=1)
    p = next((tmp_path / "runs").glob("vlltr*.json"))
    rec = json.loads(p.read_text())
    del rec["predictions"]
    p.write_text(json.dumps(rec))
    assert cli.main(["compare", "vlltr", "baseline", "--out", str(tmp_path)]) == 2
    assert "no per-image predictions" in capsys.readouterr().err


def test_diff_says_whether_each_paper_number_is_inside_our_interval(tmp_path, capsys):
    spec = load_table(1)
    row = next(r for r in spec.runs if r.method == "baseline")
    paper = row.paper["overall"].value
    for seed, v in enumerate((paper - 0.3, paper + 0.5, paper + 0.1)):  # inside a t interval of ±~1
        rec = {"method": "baseline", "variant": spec.variant(row), "dataset": row.dataset, "backbone": "RN50",
               "seed": seed, "metrics": {c: {"overall": v} for c in ("paper", "decoupling")},
               "per_class_accuracy": [v], "train_counts": [100], "config": {}, "wall_time_s": 0.0,
               "git_revision": None, "versions": {}, "device": "cpu", "eval_split": "test",
               "run_key": f"b{seed}"}
        write_result(tmp_path, rec)
    assert cli.main(["diff", "--table", "1", "--out", str(tmp_path), "--metric", "overall"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| 16 "))
    assert "(seeds)" in line and "inside" in line and "within" in line
    # other rows are missing: strict fails under every rule; the baseline row alone passes both rules
    assert cli.main(["diff", "--table", "1", "--out", str(tmp_path), "--strict", "interval"]) == 1
    from ltrbench.tables import render_diff

    rep = render_diff(spec, load_results(tmp_path), dataset=row.dataset, metrics=["overall"])
    v = rep.values[rep.values["row"] == row.index]
    assert bool(v["in_interval"].iloc[0]) and v["status"].iloc[0] == "within"


def test_diff_with_bootstrap_intervals_reads_the_predictions(tmp_path, capsys):
    from ltrbench.results import read_results
    from ltrbench.tables import diff_frame

    spec = load_table(1)
    row = next(r for r in spec.runs if r.method == "baseline")
    write_runs(tmp_path, "baseline", [0, 1, 2], np.full(10, 0.3), variant=spec.variant(row), dataset=row.dataset)
    records = read_results(tmp_path)
    d = diff_frame(spec, load_results(records), row.dataset, records=records, ci="bootstrap")
    v = d[(d["row"] == row.index) & (d["metric"] == "overall")].iloc[0]
    assert v["interval"] == "bootstrap" and v["ours_lo"] < v["ours_mean"] < v["ours_hi"]
    assert v["in_interval"] is False or v["in_interval"] == False  # noqa: E712 (ours ≈ 30 %, the paper 60.5 %)
    assert cli.main(["diff", "--table", "1", "--out", str(tmp_path), "--ci", "none", "--metric", "overall"]) == 0
    assert "in interval" not in capsys.readouterr().out
