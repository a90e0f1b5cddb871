"""Every registered method, through the library API on the tiny built-in world: it plans, runs,
writes a valid result record, and the same seed gives the same metrics."""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

import ltrbench
from conftest import TINY
from ltrbench.config import tiny_overrides
from ltrbench.head_fit import TrainedHeadMethod
from ltrbench.metrics import METRIC_NAMES, SCORE_KINDS, SHIFTS, shift_name
from ltrbench.registry import METHODS
from ltrbench.results import REQUIRED_KEYS, RESULT_COLUMNS, read_results

#: Every training stage of every method cut to one or two epochs of small batches, by a rule over
#: every registered section (its ``tiny()``, else each train field at 1 epoch of batch 64), so a
#: new method needs no entry here.
FAST = [*TINY, *tiny_overrides()]
#: Stages shared by every method and costly to redo: kept when a method is rerun from scratch.
SHARED = ("clip_weights", "worlds")


@pytest.mark.parametrize("method", METHODS.names())
def test_method_plans_runs_and_records_deterministically(method, tmp_path, monkeypatch):
    plan = ltrbench.plan(ltrbench.Request([method], "synthetic_lt", overrides=FAST))
    assert len(plan.runs) == 1 and plan.targets[0].kind == "evaluate"
    assert plan.stages[-1] is plan.targets[0] and len({s.key for s in plan.stages}) == len(plan.stages)

    df = ltrbench.run(ltrbench.Request([method], "synthetic_lt", overrides=FAST), ltrbench.ExecOptions(out=tmp_path / "out", progress=False))
    assert list(df.frame.columns) == list(RESULT_COLUMNS)
    assert len(df.frame) == 1 and df.frame.loc[0, "method"] == method and df.frame.loc[0, "seed"] == 0
    (rec,) = read_results(tmp_path / "out")
    assert all(k in rec for k in REQUIRED_KEYS)
    assert {s["key"] for s in rec["stages"]} == {s.key for s in plan.stages}
    num_classes = len(rec["train_counts"])
    assert len(rec["per_class_accuracy"]) == num_classes
    for conv, row in rec["metrics"].items():
        for name, value in row.items():
            assert value is None or 0.0 <= value <= 100.0, (conv, name, value)
    assert math.isclose(df.frame.loc[0, "overall"], rec["metrics"]["paper"]["overall"])
    # every metric and its bootstrap interval; the per-image predictions paired comparisons resample
    for conv, row in rec["metrics"].items():
        assert set(row) == set(METRIC_NAMES), conv
        for name in ("overall", "many", "medium", "few"):
            iv = rec["intervals"][conv][name]
            assert (iv is None) == (row[name] is None) and (iv is None or iv[0] <= row[name] <= iv[1]), (conv, name)
    assert row["nll"] is not None and row["ece"] is not None
    assert len(rec["predictions"]["labels"]) == len(rec["predictions"]["log_p_true"]) == rec["num_eval"]
    assert set(rec["shifted"]) == {shift_name(d, r) for d, r in SHIFTS}
    # what the scores are and the prior the oracle starts from; the oracle exactly where it is defined
    assert rec["score_kind"] in SCORE_KINDS and rec["score_prior"] == plan.targets[0].config.score_prior
    assert (rec["shifted_oracle_per_class"] is None) == (rec["score_kind"] == "scores")
    # the post-hoc logit adjustment (τ chosen on val) only for logits (test_posthoc_rule_for_every_
    # shipped_method_with_logits: every shipped one whose scores are logits records it)
    if "posthoc_la" in rec["rules"]:
        assert rec["score_kind"] == "logits" and "posthoc_tau" in rec["info"], (rec["score_kind"], rec["info"])
    # every training stage records what it trained (a method with none, e.g. zero-shot, records nothing)
    trains = [s for s in plan.stages if s.kind in ("finetune", "cvlp", "lgr", "lift")
              or (s.kind == "head" and isinstance(METHODS.get(method)(), TrainedHeadMethod))]
    assert len(rec["params"]) == len({s.label or s.kind for s in trains}), (rec["params"], [s.describe() for s in trains])
    assert all(p["trainable"] > 0 for p in rec["params"].values())

    # Same seed, every method stage recomputed in a fresh cache (the shared world and CLIP copied):
    # the same metrics, to the last digit.
    first = Path(os.environ["LTRBENCH_CACHE"])
    second = tmp_path / "cache2"
    for name in SHARED:
        shutil.copytree(first / name, second / name)
    monkeypatch.setenv("LTRBENCH_CACHE", str(second))
    again = ltrbench.run(ltrbench.Request([method], "synthetic_lt", overrides=FAST))
    executed = again.execution["executed"]
    assert executed == len(plan.stages) - sum(s.kind in SHARED for s in plan.stages)
    assert again.records[0]["metrics"] == rec["metrics"]
    assert again.records[0]["per_class_accuracy"] == rec["per_class_accuracy"]
    json.dumps(again.records[0])  # a record is plain JSON


SHIPPED_LOGITS = ("baseline", "la", "bs", "lade", "ldam_drw", "cb", "focal", "grw", "lift", "crt", "lws", "tau_norm", "fc")


def test_posthoc_rule_for_every_shipped_method_with_logits(tmp_path):
    """Every shipped method whose scores are logits records post-hoc logit adjustment (issue 19):
    its prediction carries its val scores (``classifier_prediction``, a head's val logits)."""
    res = ltrbench.run(ltrbench.Request(list(SHIPPED_LOGITS), "synthetic_lt", overrides=FAST))
    for rec in res.records:
        assert rec["score_kind"] == "logits", rec["method"]
        assert "posthoc_la" in rec["rules"] and "posthoc_tau" in rec["info"], rec["method"]
