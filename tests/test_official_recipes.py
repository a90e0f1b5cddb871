"""The real data sets' resolved recipes against the official code, value by value.

Sources: the official VL-LTR code (github.com/ChangyaoTian/VL-LTR, commit e5391f5: configs/*,
main.py's argparse defaults, datasets.py, mcloader/inat.py, eval.sh) and the decoupling code
(github.com/facebookresearch/classifier-balancing, commit f162ade: config/*). The VL-LTR code's
batch sizes are per GPU on 8 GPUs (dist_train_arun.sh); here they are global, and the lr belongs to
that global batch. docs/algorithms.md#cvlp-recipes, docs/algorithms.md#lgr-parameters-and-learning-rates
and docs/algorithms.md#crt transcribe the same values.

The one value that differs on purpose is the mixed precision: both codes' NativeScaler train with
fp16 + GradScaler, the harness defaults to bf16 (``train.amp: fp16`` gives the official one). Any
other difference is a failure of this test.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ltrbench
from ltrbench.backbones import create_clip
from ltrbench.config import load_config
from ltrbench.paths import cache_root
from ltrbench.registry import BACKBONES
from ltrbench.stage_kinds import Draw
from ltrbench.stages import artifact_dir, run_stage

sys.path.insert(0, str(Path(__file__).parent))
from test_real_data import make_inat2018, make_places_lt  # noqa: E402

DATASETS = ("imagenet_lt", "places_lt", "inat2018")
BACKBONE_NAMES = ("RN50", "ViT-B-16")

# ----------------------------------------------------------------------------- the official values

#: The VL-LTR code's per-GPU batch × 8 GPUs; the pre-train configs (configs/<ds>/pretrain/*.py).
CVLP = {
    # (dataset, backbone): lr, global batch, epochs, min_lr (the VL-LTR argparse default 1e-5 unless the
    # config sets 0.), train_mode (False in the IN-LT / Places configs, argparse default True on iNat)
    ("imagenet_lt", "RN50"): (5e-5, 256 * 8, 50, 0.0, False),
    ("imagenet_lt", "ViT-B-16"): (3.5e-5, 128 * 8, 50, 0.0, False),
    ("places_lt", "RN50"): (5e-5, 256 * 8, 50, 0.0, False),
    ("places_lt", "ViT-B-16"): (1e-5, 128 * 8, 50, 0.0, False),
    ("inat2018", "RN50"): (5e-4, 256 * 8, 100, 1e-5, True),
    ("inat2018", "ViT-B-16"): (3.5e-4, 128 * 8, 100, 1e-5, True),
}
#: The fine-tune configs (configs/<ds>/finetune/*.py): lr, global batch, epochs, frozen encoder
#: (IN-LT/Places models LGR_r50 / LGR_vit16 freeze the visual tower; iNat's *_img_grad train it),
#: v_detach (iNat's *_v_detach_* models), α of the two_branch fusion (engine.py: 0.7 on INAT).
LGR = {
    ("imagenet_lt", "RN50"): (1e-3, 128 * 8, 50, True, False, 0.2),
    ("imagenet_lt", "ViT-B-16"): (1e-3, 128 * 8, 50, True, False, 0.2),
    ("places_lt", "RN50"): (1e-4, 128 * 8, 50, True, False, 0.2),
    ("places_lt", "ViT-B-16"): (5e-5, 128 * 8, 50, True, False, 0.2),
    ("inat2018", "RN50"): (2e-5, 128 * 8, 360, False, True, 0.7),
    ("inat2018", "ViT-B-16"): (2e-5, 128 * 8, 360, False, True, 0.7),
}
#: The decoupling code's configs: stage 1 (feat_uniform / feat_unifrom; Places: the feat_model block of
#: cls_crt.yaml, see configs/places_lt.yaml), cRT (cls_crt.yaml), LWS (cls_lws.yaml):
#: (lr, batch, weight decay, epochs) each.
DECOUPLING = {
    "imagenet_lt": {"stage1": (0.2, 512, 5e-4, 90), "crt": (0.2, 512, 5e-4, 10), "lws": (0.2, 512, 5e-4, 5)},
    "places_lt": {"stage1": (0.01, 256, 5e-4, 90), "crt": (0.1, 256, 5e-4, 10), "lws": (0.1, 256, 5e-4, 5)},
    "inat2018": {"stage1": (0.2, 512, 1e-4, 90), "crt": (0.2, 512, 1e-4, 30), "lws": (0.2, 512, 1e-4, 5)},
}


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_cvlp_recipe_is_the_official_one(dataset, backbone):
    c = load_config(dataset, backbone).cvlp
    lr, batch, epochs, min_lr, train_mode = CVLP[dataset, backbone]
    t = c.train
    assert (t.lr, t.batch_size, t.ref_batch_size, t.epochs, t.min_lr, t.train_mode) == (
        pytest.approx(lr), batch, batch, epochs, pytest.approx(min_lr), train_mode)
    # main.py defaults: AdamW (eps 1e-8), weight decay 0.05, warm-up 5 epochs from 1e-6, cosine
    # stepped after each epoch; weight_sample + use_sqrt_freq; smoothCE 0.1; β 0.5 logits.
    assert (t.optimizer, t.weight_decay, t.warmup_epochs, t.schedule_shift, t.sampler) == ("adamw", 0.05, 5, -1, "sqrt")
    assert (c.beta, c.distill, c.smoothing, c.init, c.source, c.enabled) == (0.5, "logits", 0.1, "clip", "wiki_prompt",
                                                                            True)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_lgr_recipe_is_the_official_one(dataset, backbone):
    c = load_config(dataset, backbone).lgr
    lr, batch, epochs, frozen, v_detach, alpha = LGR[dataset, backbone]
    t = c.train
    assert (t.lr, t.batch_size, t.ref_batch_size, t.epochs) == (pytest.approx(lr), batch, batch, epochs)
    assert (t.warmup_epochs, t.min_lr, t.optimizer, t.weight_decay, t.sampler) == (0, 0.0, "adamw", 0.05, "sqrt")
    assert (not c.finetune_encoder, c.v_detach, c.alpha, c.text_lr) == (frozen, v_detach, alpha, 1e-6)
    # D1: the VL-LTR code trains LGR on augmented images (the training transform) with main.py's mixup 0.8 /
    # CutMix 1.0 / smoothing 0.1, whether the encoder is frozen or not.
    assert c.through_encoder
    assert (c.mixup, c.cutmix, c.label_smoothing, c.hidden) == (0.8, 1.0, 0.1, None)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_anss_and_data_are_the_official_ones(dataset, backbone):
    cfg = load_config(dataset, backbone)
    assert (cfg.anss.mode, cfg.anss.num_anchors, cfg.anss.scoring) == ("anss", 64, "faithful")
    if dataset == "inat2018":  # the --select run: eval.sh on 1 GPU with the pre-train config's batch
        assert cfg.anss.scoring_batch_size == {"RN50": 256, "ViT-B-16": 128}[backbone]
    spec = BACKBONES.get(backbone)
    assert cfg.data.augment == "official" and (cfg.data.image_size or spec.image_size) == 224
    assert (cfg.data.eval_resize or spec.eval_resize) == 256  # int(256 / 224 * 224), bicubic


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_decoupling_recipes_are_k_ones(dataset, backbone):
    cfg = load_config(dataset, backbone)
    for section, (lr, batch, wd, epochs) in DECOUPLING[dataset].items():
        t = cfg.section(section).train
        assert (t.lr, t.batch_size, t.ref_batch_size, t.weight_decay, t.epochs) == (
            pytest.approx(lr), batch, batch, pytest.approx(wd), epochs), section
        # SGD momentum 0.9, coslr to endlr 0 stepped at the start of each epoch.
        assert (t.optimizer, t.momentum, t.min_lr, t.warmup_epochs, t.schedule_shift) == ("sgd", 0.9, 0.0, 0, 1)
        if section == "stage1":
            assert t.sampler == "instance" and not t.select_best
        else:  # ClassAwareSampler, num_samples_cls 4; the decoupling code keeps the best val epoch
            assert (t.sampler, t.samples_per_class, t.select_best) == ("class_aware", 4, True)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_mixed_precision_is_the_one_listed_departure(dataset, backbone):
    cfg = load_config(dataset, backbone)
    for section in ("cvlp", "lgr", "baseline", "stage1", "crt", "lws"):
        assert cfg.section(section).train.amp_mode == "bf16"  # official: fp16 + GradScaler
    cfg = load_config(dataset, backbone, overrides=["cvlp.train.amp=fp16"])
    assert cfg.cvlp.train.amp_mode == "fp16"


# ----------------------------------------------------------------------------- D2: AnSS's scoring set


def _random_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "mini-clip-random.pt"
    torch.save(create_clip("mini-clip", None).state_dict(), path)
    return path


def _scoring_stage(plan):
    (anss,) = [s for s in plan.stages if s.kind == "anss"]
    (feats,) = [s for s in anss.inputs if s.kind == "features"]
    return feats


def test_inat_faithful_scoring_is_one_epoch_of_the_training_loader(tmp_path):
    """The official --select run on iNat: the first 50 training images per class, through CVLP's
    sampler (square root, with replacement) and the training transform, last batch dropped."""
    (tmp_path / "root").mkdir()
    root = make_inat2018(tmp_path / "root")
    weights = _random_weights(tmp_path)
    common = [f"backbone.pretrained={weights}", "cvlp.enabled=false", "data.num_workers=0", "data.augment=official"]
    plan = ltrbench.plan(ltrbench.Request(["vlltr"], "inat2018", backbone="mini-clip", data_root=str(root), overrides=[*common, "anss.scoring_batch_size=4"]))
    feats = _scoring_stage(plan)
    assert feats.config.split == "train" and feats.config.max_per_class == 50
    assert feats.config.draw == Draw("sqrt", 4) and feats.run_seed == 0  # the run's seed draws the epoch
    assert feats.config.image["augment"] == "official"
    cache = cache_root()
    for s in (*feats.inputs, feats):
        run_stage(s, cache, progress=False)
    labels = np.load(artifact_dir(cache, feats) / "labels.npy")
    n = 11  # the miniature root's training images (6 + 3 + 2), all within the first 50
    assert len(labels) == (n // 4) * 4  # N draws, the last incomplete batch of 4 dropped
    assert np.load(artifact_dir(cache, feats) / "feats.npy").shape[0] == len(labels)

    clean = ltrbench.plan(ltrbench.Request(["vlltr"], "inat2018", backbone="mini-clip", data_root=str(root), overrides=[*common, "anss.scoring=clean"]))
    cf = _scoring_stage(clean)
    assert cf.config.draw is None and cf.config.image["augment"] == "none" and cf.config.max_per_class == 50
    assert cf.run_seed is None  # the evaluation transform over fixed images: one set for every seed


def test_places_faithful_scoring_is_the_val_split(tmp_path):
    (tmp_path / "root").mkdir()
    root = make_places_lt(tmp_path / "root")
    weights = _random_weights(tmp_path)
    plan = ltrbench.plan(ltrbench.Request(["vlltr"], "places_lt", backbone="mini-clip", data_root=str(root), overrides=[f"backbone.pretrained={weights}"]))
    feats = _scoring_stage(plan)
    assert feats.config.split == "val" and feats.config.draw is None and feats.config.max_per_class is None
    (lgr,) = [s for s in plan.stages if s.kind == "lgr"]
    assert lgr.roles == ("anchors", "model")  # D1: through the encoder, no feature-cache inputs
    assert lgr.config.lgr.image_augment is True and lgr.config.lgr.mixup == 0.8
