"""The new methods end to end on the tiny built-in world: LIFT's stage and records (rules,
parameter counts, transforms), ``lift.peft``/``lift.loss``/``lift.variant``, the loss methods'
post-hoc rule and LDAM-DRW's cosine head, the tables beyond the paper and the leaderboard."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import ltrbench
from conftest import TINY
from ltrbench import peft
from ltrbench.errors import ConfigError
from ltrbench.results import read_results
from ltrbench.tables import extra_tables, leaderboard, load_extra_table, params_of, render_extra_table

FAST = [*TINY, "lift.train.epochs=1", "lift.train.batch_size=64"]


def _stage(rec, kind):
    (s,) = [s for s in rec["stages"] if s["kind"] == kind]
    return json.loads((Path(os.environ["LTRBENCH_CACHE"]) / kind / s["key"] / "stage.json").read_text())


def test_lift_records_rules_params_and_transforms(tmp_path):
    df = ltrbench.run(ltrbench.Request(["lift"], "synthetic_lt", overrides=FAST), ltrbench.ExecOptions(out=tmp_path)).frame
    (rec,) = read_results(tmp_path)
    assert set(rec["rules"]) == {"single_crop", "five_crop", "posthoc_la"} and rec["primary_rule"] == "five_crop"
    assert rec["metrics"]["paper"] == rec["rules"]["five_crop"]["paper"]
    assert rec["info"]["posthoc_tau"] in ltrbench.losses.POSTHOC_TAUS
    stage = _stage(rec, "lift")
    C = len(rec["train_counts"])
    D, L = 64, 3  # mini-clip's tower
    r = peft.default_bottleneck(C, L)
    adaptformer = L * (2 * D + D * r + r + r * D + D + 1)
    (p,) = rec["params"].values()
    assert p == {"trainable": adaptformer + C * D, "added": adaptformer + C * D, "peft_added": adaptformer}
    assert stage["peft"] == {"module": "adaptformer", "bottleneck": r}
    assert stage["loss"] == "logit_adjusted" and stage["loss_params"] == {"tau": 1.0, "variant": "LIFT"}
    assert "bilinear" in stage["transforms"]["five_crop"] and "five crops 32" in stage["transforms"]["five_crop"]
    assert df.loc[0, "overall"] == rec["metrics"]["paper"]["overall"]


@pytest.mark.parametrize("overrides", [["lift.peft=lora"], ["lift.peft=none"], ["lift.loss=ldam"],
                                       ["lift.variant=plus", "lift.plus_epochs=1"], ["lift.tte=false"]])
def test_lift_options(tmp_path, overrides):
    ltrbench.run(ltrbench.Request(["lift"], "synthetic_lt", overrides=[*FAST, *overrides]), ltrbench.ExecOptions(out=tmp_path))
    (rec,) = read_results(tmp_path)
    stage = _stage(rec, "lift")
    (p,) = rec["params"].values()
    if "lift.peft=none" in overrides:
        assert p["peft_added"] == 0 and p["trainable"] == len(rec["train_counts"]) * 64
    if "lift.loss=ldam" in overrides:
        assert stage["loss"] == "ldam" and stage["loss_params"]["variant"] == "LIFT"
    if "lift.variant=plus" in overrides:
        assert "bicubic" in stage["transforms"]["five_crop"] and stage["effective_lr"] == pytest.approx(0.02 * 64 / 128)
    if "lift.tte=false" in overrides:
        assert set(rec["rules"]) == {"single_crop", "posthoc_la"} and rec["primary_rule"] == "single_crop"


def test_lift_on_a_resnet_is_refused_at_planning():
    from ltrbench.methods.lift import check_backbone

    with pytest.raises(ConfigError, match="needs a ViT image tower and RN50 is a ResNet.*none, full, bitfit"):
        check_backbone("RN50")
    check_backbone("ViT-B-16")
    check_backbone("mini-clip")


def test_loss_methods_record_posthoc_rule_and_ldam_uses_a_cosine_head(tmp_path):
    ltrbench.run(ltrbench.Request(["la", "ldam_drw"], "synthetic_lt", overrides=FAST), ltrbench.ExecOptions(out=tmp_path))
    recs = {r["method"]: r for r in read_results(tmp_path)}
    for r in recs.values():
        assert set(r["rules"]) == {"posthoc_la"} and "posthoc_tau" in r["info"]
        (p,) = r["params"].values()
        assert p["added"] < p["trainable"]
    ft = _stage(recs["ldam_drw"], "finetune")
    assert (ft["config"]["head"], ft["config"]["head_scale"]) == ("cosine", 1.0) and ft["config"]["train"]["sampler"] == "instance"
    C = len(recs["la"]["train_counts"])
    assert list(recs["ldam_drw"]["params"].values())[0]["added"] == C * 64  # no bias
    assert list(recs["la"]["params"].values())[0]["added"] == C * 64 + C


def test_tables_beyond_the_paper_load():
    assert {"lift_peft", "lt_losses"} <= set(extra_tables())
    spec = load_extra_table("lift_peft")
    assert {r.method for r in spec.rows} == {"zeroshot", "lift"}
    overrides = [o for r in spec.rows for o in r.overrides]
    assert {f"lift.peft={m}" for m in peft.PEFT_MODULES if m != "adaptformer"} <= set(overrides)
    with pytest.raises(ConfigError, match="No table 'nope'"):
        load_extra_table("nope")


@pytest.mark.slow
def test_a_table_beyond_the_paper_runs_and_prints(tmp_path, capsys):
    """``--table lt_losses`` (16 runs on the tiny world; through the library, as the CLI calls it, so
    no subprocess timeout applies on a loaded machine), then ``tables`` prints it and the leaderboard."""
    from ltrbench import cli

    ltrbench.run(ltrbench.Request(None, "synthetic_lt", overrides=[*FAST, "baseline.train.epochs=1"], table="lt_losses"),
                 ltrbench.ExecOptions(out=tmp_path))
    assert cli.main(["tables", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Leaderboard: synthetic_lt, mini-clip" in out and "The long-tail losses" in out and "| LIFT + LDAM " in out
    recs = read_results(tmp_path)
    df = ltrbench.results.load_results(tmp_path)
    board = leaderboard(df, "paper", params_of(recs))
    assert sum(line.startswith("| 1 ") for line in board.splitlines()) == 1 and "added params" in board  # one rank 1
    table = render_extra_table(load_extra_table("lt_losses"), df, params=params_of(recs))
    assert table.count("| 1       |") >= 16  # every row ran with one seed


def test_five_crops_equal_lifts_test_transform():
    """LIFT trainer.py ``transform_test`` with tte: Resize(S + expand) → FiveCrop(S) → ToTensor →
    Normalize, on a non-square image; and the in-memory batch path on the same crops."""
    import numpy as np
    import torch
    import torchvision.transforms as T
    import torchvision.transforms.functional as TF
    from PIL import Image

    from ltrbench.data.loaders import _Crops

    im = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8))
    mean, std = (0.48, 0.45, 0.40), (0.26, 0.26, 0.27)
    lift = T.Compose([T.Resize(35), T.FiveCrop(32), T.Lambda(lambda cs: torch.stack([T.ToTensor()(c) for c in cs])),
                      T.Normalize(mean, std)])
    ours = T.Compose([T.Resize(35), T.PILToTensor(), _Crops(32, 5, mean, std)])
    assert torch.allclose(lift(im), ours(im), atol=1e-6)
    x = torch.rand(2, 3, 35, 35)
    ref = torch.stack([T.Normalize(mean, std)(torch.stack(TF.five_crop(x[i], [32, 32]))) for i in range(2)])
    assert torch.allclose(_Crops(32, 5, mean, std)(x), ref, atol=1e-6)
    assert _Crops(32, 1, mean, std)(x).shape == (2, 1, 3, 32, 32)
