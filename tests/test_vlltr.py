"""VL-LTR end to end on the tiny built-in world: every Table 4 row and Table 10's prompt-only run."""
import json
import os

import pytest
import torch

import ltrbench
from conftest import TINY, run_cli, tiny_set

FAST = ["cvlp.train.epochs=1", "lgr.train.epochs=1", "fc.train.epochs=1", "cvlp.train.batch_size=64",
        "lgr.train.batch_size=64"]


@pytest.fixture(scope="module")
def table4(tmp_path_factory):
    out = tmp_path_factory.mktemp("t4")
    r = run_cli("--table", "4", "--dataset", "synthetic_lt", "--out", str(out), "--quiet", *tiny_set(FAST))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {json.loads(f.read_text())["variant"]: json.loads(f.read_text()) for f in (out / "runs").glob("*.json")}
    return r, recs


@pytest.mark.slow
def test_every_table4_row_runs_and_renders(table4):
    r, recs = table4
    assert sorted(recs) == [f"t4r{i}" for i in range(1, 8)]
    for i in range(1, 8):
        assert f"| {i} " in r.stdout  # each row label starts with its number
    assert "ours vs paper" in r.stdout and "70.1" in r.stdout


def _stage_keys(rec, kind):
    return {s["key"] for s in rec["stages"] if s["kind"] == kind}


@pytest.mark.slow
def test_table4_rows_share_and_differ_as_designed(table4):
    _, recs = table4
    cvlp = {v: _stage_keys(rec, "cvlp") for v, rec in recs.items()}
    # Rows 1, 5, 6, 7 share one CVLP stage (with distillation); 2 has none; 3 and 4 have their own.
    assert cvlp["t4r1"] == cvlp["t4r5"] == cvlp["t4r6"] == cvlp["t4r7"] and len(cvlp["t4r1"]) == 1
    assert cvlp["t4r2"] == set()
    assert len({frozenset(cvlp[v]) for v in ("t4r1", "t4r3", "t4r4")}) == 3
    # The built-in recipe has no distillation (β = 0); the "w/ L_dis" rows set the paper's 0.5.
    assert {recs[v]["config"]["cvlp"]["beta"] for v in ("t4r1", "t4r5", "t4r6", "t4r7")} == {0.5}
    assert recs["t4r4"]["config"]["cvlp"]["beta"] == 0.0
    anss = {v: _stage_keys(rec, "anss") for v, rec in recs.items() if rec["method"] == "vlltr"}
    assert anss["t4r1"] != anss["t4r7"]  # AnSS vs cut-off


@pytest.mark.slow
def test_vlltr_records_all_fusion_rules_with_faithful_primary(table4):
    _, recs = table4
    rec = recs["t4r1"]
    assert rec["primary_rule"] == "alpha" and rec["bucket_rule"] == "logit_sum"
    assert {"alpha", "paper", "logit_sum", "visual_branch", "text_branch"} <= set(rec["rules"])
    for conv in ("paper", "decoupling"):
        m = rec["metrics"][conv]
        assert m["overall"] == rec["rules"]["alpha"][conv]["overall"]
        for b in ("many", "medium", "few"):
            assert m[b] == rec["rules"]["logit_sum"][conv][b]


@pytest.mark.slow
def test_prompt_only_source_runs(tmp_path):
    r = run_cli("--methods", "vlltr", "--out", str(tmp_path), "--quiet",
                *tiny_set([*FAST, "cvlp.source=prompt_only"]))
    assert r.returncode == 0, r.stderr[-3000:]
    (f,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(f.read_text())
    assert rec["config"]["cvlp"]["source"] == "prompt_only"
    assert any(s["label"].endswith("prompt_only") for s in rec["stages"] if s["kind"] == "cvlp")


@pytest.mark.slow
def test_lgr_through_the_encoder_with_mixup_runs(tmp_path):
    """The official iNat shape: LGR fine-tunes the image encoder on images, with mixup/CutMix."""
    r = run_cli("--methods", "vlltr", "--out", str(tmp_path), "--quiet",
                *tiny_set([*FAST, "lgr.finetune_encoder=true", "lgr.mixup=0.8", "lgr.cutmix=1.0"]))
    assert r.returncode == 0, r.stderr[-3000:]
    (f,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(f.read_text())
    assert rec["config"]["lgr"]["finetune_encoder"] is True
    assert [s for s in rec["stages"] if s["kind"] == "lgr"]
    # Through the encoder LGR reads images, not the feature cache: no cached training features.
    feats = [s["label"] for s in rec["stages"] if s["kind"] == "features"]
    assert feats and not any(label.endswith(":train") for label in feats), feats


@pytest.mark.slow
def test_frozen_lgr_trains_from_the_feature_cache(table4):
    _, recs = table4
    feats = [s["label"] for s in recs["t4r4"]["stages"] if s["kind"] == "features"]
    assert any(label.endswith(":train") for label in feats), feats


@pytest.mark.slow
def test_frozen_lgr_on_augmented_images_keeps_the_encoder(tmp_path):
    """lgr.image_augment: the encoder stays frozen, but the head trains on images through it."""
    r = run_cli("--methods", "vlltr", "--out", str(tmp_path), "--quiet",
                *tiny_set([*FAST, "lgr.image_augment=true", "lgr.mixup=0.8"]))
    assert r.returncode == 0, r.stderr[-3000:]
    (f,) = (tmp_path / "runs").glob("*.json")
    rec = json.loads(f.read_text())
    feats = [s["label"] for s in rec["stages"] if s["kind"] == "features"]
    assert not any(label.endswith(":train") for label in feats), feats
    cache = os.environ["LTRBENCH_CACHE"]
    (lgr,) = [s["key"] for s in rec["stages"] if s["kind"] == "lgr"]
    (cvlp,) = [s["key"] for s in rec["stages"] if s["kind"] == "cvlp"]
    head = torch.load(f"{cache}/lgr/{lgr}/lgr.pt", map_location="cpu")
    start = torch.load(f"{cache}/cvlp/{cvlp}/weights.pt", map_location="cpu")
    enc = [k for k in head if k.startswith("visual.")]
    assert enc and all(torch.equal(head[k], start[k]) for k in enc)
    info = json.loads(open(f"{cache}/lgr/{lgr}/stage.json").read())
    assert info["trained_on"] == "images" and info["image_mixing"].startswith("mixup 0.8")


def _lgr_and_eval_keys(*sets):
    plan = ltrbench.plan(ltrbench.Request(["vlltr"], "synthetic_lt", overrides=[*TINY, *FAST, *sets]))
    (lgr,) = [s for s in plan.stages if s.kind == "lgr"]
    return lgr.key, plan.targets[0].key


def test_lgr_key_holds_only_what_trains_the_head():
    """α fuses at evaluation and mixup/CutMix need images: neither retrains a head fitted from the cache."""
    lgr, ev = _lgr_and_eval_keys()
    lgr_a, ev_a = _lgr_and_eval_keys("lgr.alpha=0.5")
    assert lgr_a == lgr and ev_a != ev  # α: a new evaluation of the same head
    assert _lgr_and_eval_keys("lgr.mixup=0.3", "lgr.cutmix=0.0")[0] == lgr
    assert _lgr_and_eval_keys("lgr.label_smoothing=0.0")[0] != lgr
    # Through the encoder the mixing is part of training, so it is part of the key.
    ft = _lgr_and_eval_keys("lgr.finetune_encoder=true")[0]
    assert _lgr_and_eval_keys("lgr.finetune_encoder=true", "lgr.mixup=0.3")[0] != ft
