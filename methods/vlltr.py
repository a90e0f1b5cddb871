"""``vlltr``: VL-LTR (Tian et al.): CVLP → anchor sentence selection → language-guided recognition.

Stages (docs/design.md#stages): ``clip_weights`` → ``cvlp`` (methods/_cvlp.py) →
``text_features`` + ``features`` of the scoring images → ``anss`` (this file) → ``lgr`` (this
file) → ``evaluate``. Every row of Tables 4, 9 and 10 is this method with ``--set`` overrides
(configs/tables/): ``cvlp.enabled=false`` (row 2), ``cvlp.init=random`` + ``cvlp.beta=0`` (row 3),
``cvlp.beta=0`` (row 4), ``anss.mode=cutoff`` (row 7), ``cvlp.distill=feature`` (Table 9),
``cvlp.source=prompt_only`` (Table 10).

Faithful defaults (docs/algorithms.md#anss, docs/algorithms.md#lgr): AnSS scores every sentence
by L_lin against the val images (ImageNet-LT, Places-LT, the built-in world) or, on iNat (where
val is the evaluation split), one epoch of CVLP's training loader over the first 50 training
images per class, and keeps the M = 64 lowest; LGR trains on augmented images with mixup/CutMix
through the encoder (frozen on ImageNet-LT and Places-LT, ``lgr.image_augment``; fine-tuned on
iNat) as the official code does, or from the feature cache (the LGRConfig default, which the
built-in world keeps: far cheaper); inference reports the official α-fusion (overall) with the
logit sum for many/medium/few as the primary ("faithful") result, and the paper's equal
probability sum beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from timm.data import Mixup
from torch import nn

from ltrbench.plugin import (ANCHOR_MODES, SAMPLER_PRIOR, ConfigError, HeadEnv, HeadFit, LGRHead, METHODS, Method, Prediction,
    Reads, RunContext, Stage, StageContext, TrainConfig, anss_scores, dataset_of, device, eval_loader,
    from_dict, fuse_logits, head_logits, image_settings, load_array, load_head_data, load_model, parameter_counts,
    register_section, save_array, select_anchors, soft_cross_entropy, stage_kind, train_head, train_loader)
from ltrbench.methods._cvlp import cvlp_stage


@register_section("anss")
@dataclass(frozen=True)
class AnssConfig:
    mode: str = "anss"  # anss (lowest L_lin) | cutoff (first M in corpus order: prompts) | random
    num_anchors: int = 64  # M
    # The images L_lin is scored against (docs/algorithms.md#anss-scoring-images). faithful: the val
    # split (ImageNet-LT, Places-LT: the eval transform), or where val is the evaluation split
    # (iNat) the official --select loader: the first 50 training images per class drawn as one
    # epoch of CVLP's training loader (training transform, its sampler with replacement, last
    # batch dropped), so some are scored twice and some not at all. clean: the first ≤ 50 training
    # images per class, each once, under the evaluation transform.
    scoring: str = "faithful"
    scoring_batch_size: int = 256  # faithful iNat: the select run's batch (one GPU; ViT-B/16: 128)

    def check(self) -> None:
        if self.mode not in ANCHOR_MODES:
            raise ConfigError(f"anss.mode must be one of {', '.join(ANCHOR_MODES)}, got {self.mode!r}.")
        if self.scoring not in ("faithful", "clean"):
            raise ConfigError(f"anss.scoring must be faithful or clean, got {self.scoring!r}.")
        if self.num_anchors < 1:
            raise ConfigError(f"anss.num_anchors must be at least 1, got {self.num_anchors}.")


@register_section("lgr")
@dataclass(frozen=True)
class LGRConfig:
    """Stage 2. Defaults: ImageNet-LT (frozen encoder, lr 1e-3 at global batch 1024, 50 epochs)."""

    finetune_encoder: bool = False  # official: false on ImageNet-LT/Places-LT, true on iNat
    # Frozen encoder only: train on augmented images through the encoder (with mixup/CutMix as set,
    # the official code's way) instead of from the feature cache (label smoothing only, far cheaper).
    image_augment: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=50, lr=1e-3, batch_size=1024, ref_batch_size=1024, warmup_epochs=0, min_lr=0.0, sampler="sqrt"))
    text_lr: float = 1e-6  # LN_q, LN_k, W_q, W_k (every parameter without "visual" in its name)
    label_smoothing: float = 0.1
    mixup: float = 0.8  # image-level mixup/CutMix of the official recipe: through-encoder path only
    cutmix: float = 1.0
    alpha: float = 0.2  # official fusion weight of the visual branch (0.7 on iNat)
    v_detach: bool = False  # official iNat models
    hidden: int | None = None  # visual MLP width (None: 4D, the official 4096 for R50 / 2048 for ViT)

    def check(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"lgr.alpha={self.alpha}: the fusion weight must lie in [0, 1].")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"lgr.label_smoothing={self.label_smoothing}: must lie in [0, 1).")
        if self.mixup < 0 or self.cutmix < 0:
            raise ConfigError(f"lgr.mixup={self.mixup}, lgr.cutmix={self.cutmix}: must be at least 0.")
        if self.text_lr < 0:
            raise ConfigError(f"lgr.text_lr={self.text_lr}: must be at least 0.")
        if self.hidden is not None and self.hidden < 1:
            raise ConfigError(f"lgr.hidden={self.hidden}: must be at least 1 (or null: 4 × the feature size).")

    @property
    def through_encoder(self) -> bool:
        """Train on images through the encoder (fine-tuned or frozen), not from the feature cache."""
        return self.finetune_encoder or self.image_augment

    def stage_config(self) -> "LGRConfig":
        """The section as the lgr stage sees it: the fields that do not change what it trains set
        to their defaults, so they leave its key alone.

        ``alpha`` only fuses the two branches at evaluation (it is in the evaluate stage's key), and
        mixup/CutMix act on images, so a head trained from the feature cache ignores them: a sweep
        of either does not retrain the head.
        """
        keep = replace(self, alpha=LGRConfig.alpha)
        return keep if self.through_encoder else replace(keep, mixup=LGRConfig.mixup, cutmix=LGRConfig.cutmix)


# --------------------------------------------------------------------------- anss


@dataclass(frozen=True)
class AnssStageConfig:
    """The ``anss`` stage: the section, and the number of classes of the run's data set. Inputs:
    ``text`` (text_features), and ``features`` (the scoring images) in ``anss`` mode."""

    anss: AnssConfig
    num_classes: int


@stage_kind("anss", version="1", gpus=0.25, memory_gb=3.0, config=AnssStageConfig, inputs=("text", "features?"))
def anss(ctx: StageContext) -> dict[str, Any]:
    a: AnssConfig = ctx.config.anss
    text_dir = ctx.input("text")
    text = torch.from_numpy(np.array(load_array(text_dir, "text_feats")))
    cls = torch.from_numpy(np.array(load_array(text_dir, "class_ids")))
    info = json.loads((text_dir / "stage.json").read_text())
    num_classes = int(ctx.config.num_classes)
    per_class = [torch.nonzero(cls == c).flatten() for c in range(num_classes)]
    embs = [text[i] for i in per_class]
    scores = None
    if a.mode == "anss":
        img_dir = ctx.input("features")
        s = anss_scores(text, cls, torch.from_numpy(np.array(load_array(img_dir, "feats"))),
                        torch.from_numpy(np.array(load_array(img_dir, "labels"))), info["logit_scale"])
        scores = [s[i] for i in per_class]
    gen = torch.Generator().manual_seed(ctx.seed)  # planned with the run's seed in random mode only
    anchors, mask, chosen = select_anchors(scores, embs, M=int(a.num_anchors), mode=a.mode, generator=gen)
    save_array(ctx.out, "anchors", anchors.numpy().astype(np.float32))
    save_array(ctx.out, "mask", mask.numpy())
    sentences = json.loads((text_dir / "sentences.json").read_text())
    picked = [[sentences[int(per_class[c][j])] for j in chosen[c].tolist()] for c in range(num_classes)]
    (ctx.out / "anchors.json").write_text(json.dumps(picked, indent=0))
    nan_classes = [c for c in range(num_classes) if scores is not None and torch.isnan(scores[c]).any()]
    return {"logit_scale": info["logit_scale"], "classes_without_scoring_images": nan_classes}


# --------------------------------------------------------------------------- lgr


class LGRModel(nn.Module):
    """Image tower + LGR head, for the paths that train on images (encoder fine-tuned or frozen)."""

    def __init__(self, visual: nn.Module, head: LGRHead) -> None:
        super().__init__()
        self.visual = visual
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.visual(x))


class LGRTask:
    """L = SCE(z^I, ỹ) + SCE(z^T, ỹ) (docs/algorithms.md#lgr-training-loss); ỹ smoothed, mixed on
    images when asked."""

    def __init__(self, module: nn.Module, c: LGRConfig, num_classes: int, mixup=None) -> None:
        self.module = module
        self.c = c
        self.num_classes = num_classes
        self.mixup = mixup

    def param_groups(self):
        # The official optimiser groups by name: "visual" (encoder, visual_fc) → lr, else text_lr.
        named = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        main = [(n, p) for n, p in named if "visual" in n]
        text = [(n, p) for n, p in named if "visual" not in n]
        return [{"params": main}, {"params": text, "lr": self.c.text_lr}]

    def set_mode(self) -> None:
        self.module.train()
        if isinstance(self.module, LGRModel):
            self.module.visual.eval()  # docs/algorithms.md#lgr-attention: the tower always runs in eval mode

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        off = self.c.label_smoothing / self.num_classes
        return torch.full((len(y), self.num_classes), off, device=y.device).scatter_(
            1, y[:, None], 1.0 - self.c.label_smoothing + off)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None and len(x) % 2 == 0:
            x, target = self.mixup(x, y)
        else:
            target = self.targets(y)
        z_img, z_txt = self.module(x)
        return soft_cross_entropy(z_img, target) + soft_cross_entropy(z_txt, target)

    def validate(self):
        return None


def lgr_head(anchor_dir: Path, c: LGRConfig) -> LGRHead:
    """A fresh LGR head on the anchors of an ``anss`` artifact (hidden width 4D unless ``lgr.hidden``)."""
    info = json.loads((anchor_dir / "stage.json").read_text())
    return LGRHead(torch.from_numpy(np.array(load_array(anchor_dir, "anchors"))),
                   torch.from_numpy(np.array(load_array(anchor_dir, "mask"))), info["logit_scale"],
                   hidden=c.hidden, v_detach=c.v_detach)


def _fit_on_features(ctx: StageContext, c: LGRConfig, seed: int, num_classes: int) -> tuple[HeadFit, nn.Module]:
    """The official ImageNet-LT/Places-LT shape: a frozen encoder, the head fitted by the one head path
    on the cached features of the train split (ỹ is label smoothing only: mixup/CutMix act on
    images, lgr.image_augment), scored on the cached eval split."""
    data = load_head_data(ctx, num_classes, ("train", "eval"))
    head = lgr_head(ctx.input("anchors"), c)
    env = HeadEnv.of(ctx, seed)
    # LGR's MLP (D → 4D → C) is large enough on real data to use every CPU thread.
    res = train_head(head, data, c.train, env, task=LGRTask(head, c, num_classes), one_thread=False,
                     desc=ctx.stage.label)
    z_img, z_txt = head_logits(head, data.eval_x, env.device, batch=1024)
    info = {**res.info, "trained_on": "feature cache (no image augmentation, no mixup/CutMix)", "image_mixing": "none"}
    return HeadFit(z_img, info, {"z_img": z_img, "z_txt": z_txt, "labels": data.eval_y}), head


def _fit_on_images(ctx: StageContext, c: LGRConfig, seed: int) -> tuple[HeadFit, nn.Module]:
    """The official iNat shape (encoder fine-tuned) or lgr.image_augment (encoder frozen): the head
    and the encoder trained on augmented images with the official mixup/CutMix, scored on the
    images of the evaluation split."""
    ds = dataset_of(ctx)
    img = image_settings(ctx)
    dev = device()
    head = lgr_head(ctx.input("anchors"), c)
    visual = load_model(ctx.input("model"), "cpu", image_size=img.image_size).visual
    if not c.finetune_encoder:
        visual.requires_grad_(False)  # image_augment: frozen encoder, augmented images
    module = LGRModel(visual, head).to(dev)
    loader = train_loader(ds, img, sampler=c.train.sampler, batch_size=c.train.batch_size, seed=seed)
    mixup, mixing = None, "none"
    if c.mixup > 0 or c.cutmix > 0:
        mixup = Mixup(mixup_alpha=c.mixup, cutmix_alpha=c.cutmix, prob=1.0, switch_prob=0.5, mode="batch",
                      label_smoothing=c.label_smoothing, num_classes=ds.num_classes)
        mixing = f"mixup {c.mixup}, cutmix {c.cutmix}"
    res = ctx.train(LGRTask(module, c, ds.num_classes, mixup), loader, c.train, device=dev, seed=seed)
    split = ctx.config.eval_split
    z_img, z_txt = head_logits(module, (x for x, _ in eval_loader(ds, split, img)), dev)
    info = {**res.info, "trained_on": "images", "image_mixing": mixing, "eval_images": len(ds.split(split))}
    labels = torch.from_numpy(ds.labels(split))
    return HeadFit(z_img, info, {"z_img": z_img, "z_txt": z_txt, "labels": labels}), module


@dataclass(frozen=True)
class LGRStageConfig:
    """The ``lgr`` stage: the run's data set, image settings and evaluation split, and the section
    as :meth:`LGRConfig.stage_config` gives it. Inputs: ``anchors``, ``model`` and, when the head
    trains from the feature cache, the ``train`` and ``eval`` features."""

    dataset: Mapping[str, Any]
    image: Mapping[str, Any]
    eval_split: str
    lgr: LGRConfig


def _lgr_on_images(config: LGRStageConfig) -> bool:
    """LGR reads images (through a DataLoader) only when it trains through the encoder."""
    return config.lgr.through_encoder


def _lgr_reads(conf: LGRStageConfig) -> Reads:
    """Through the encoder LGR reads the training and evaluation images; from the cache, none."""
    return Reads(splits=("train", conf.eval_split)) if conf.lgr.through_encoder else Reads()


@stage_kind("lgr", version="2", gpus=1.0, memory_gb=4.0, loader=_lgr_on_images, reads=_lgr_reads,
            config=LGRStageConfig, inputs=("anchors", "model", "train?", "eval?"))
def lgr(ctx: StageContext) -> dict[str, Any]:
    """VL-LTR's stage 2 (docs/algorithms.md#lgr): the LGR head on its anchors, trained from the feature cache or on
    images. Writes both branches' eval-split logits (``z_img``, ``z_txt``, with ``labels``) for the
    evaluate stage, and the trained weights without the anchors (``lgr.pt``)."""
    c: LGRConfig = ctx.config.lgr
    seed = ctx.seed
    if c.through_encoder:
        fit, module = _fit_on_images(ctx, c, seed)
    else:
        fit, module = _fit_on_features(ctx, c, seed, dataset_of(ctx).num_classes)
    for name, arr in fit.arrays.items():
        save_array(ctx.out, name, arr.numpy())
    torch.save({k: v.cpu() for k, v in module.state_dict().items() if not k.endswith("anchors")}, ctx.out / "lgr.pt")
    head = getattr(module, "head", module)  # version 2: records the parameters trained and the head's
    return {**fit.info, "params": parameter_counts(module, [p for p in head.parameters() if p.requires_grad])}


# --------------------------------------------------------------------------- the method


def _scoring_features(run: RunContext, model: Stage, a: AnssConfig) -> Stage:
    """The ``features`` stage of AnSS's scoring images (``anss.scoring``, docs/algorithms.md#anss-scoring-images)."""
    if a.scoring == "clean":
        return run.features(model, "train", max_per_class=50)
    if run.ds.eval_split != "val" and "val" in run.ds.splits:
        return run.features(model, "val")
    # iNat: the official --select run feeds the first 50 per class through CVLP's training loader.
    return run.features(model, "train", max_per_class=50, draw=(run.cfg.cvlp.train.sampler, a.scoring_batch_size))


@METHODS.register("vlltr")
class VLLTR(Method):
    name = "vlltr"
    sections = ("cvlp", "anss", "lgr")
    description = "VL-LTR: class-wise visual-linguistic pre-training + AnSS + language-guided head"

    def score_prior(self, run: RunContext) -> str:
        return SAMPLER_PRIOR[run.cfg.lgr.train.sampler]  # the fused branches, as LGR trained them

    def plan(self, run: RunContext) -> Stage:
        a: AnssConfig = run.cfg.anss
        c: LGRConfig = run.cfg.lgr
        a.check()
        c.check()
        model = cvlp_stage(run)
        anss_inputs = {"text": run.text_features(model, run.cfg.cvlp.source)}
        if a.mode == "anss":
            anss_inputs["features"] = _scoring_features(run, model, a)
        anchors = run.stage("anss", AnssStageConfig(a, run.ds.num_classes), anss_inputs,
                            label=f"{model.label}:{a.mode}{a.num_anchors}", seeded=a.mode == "random")
        inputs = {"anchors": anchors, "model": model}
        if not c.through_encoder:
            inputs.update(train=run.features(model, "train"), eval=run.features(model, run.eval_split))
        conf = LGRStageConfig(run.dataset_key(), run.img.key(), run.eval_split, c.stage_config())
        head = run.stage("lgr", conf, inputs, label=f"lgr:{model.label}")
        return run.evaluate({"lgr": head}, alpha=c.alpha)

    def predict(self, ctx, ds) -> Prediction:
        d = ctx.input("lgr")
        zi = torch.from_numpy(np.array(load_array(d, "z_img")))
        zt = torch.from_numpy(np.array(load_array(d, "z_txt")))
        labels = np.array(load_array(d, "labels"))
        alpha = float(ctx.config.params["alpha"])
        rules = {r: fuse_logits(zi, zt, r, alpha=alpha).numpy() for r in ("alpha", "paper", "logit_sum")}
        rules["visual_branch"] = zi.numpy()
        rules["text_branch"] = zt.numpy()
        return Prediction(scores=rules["alpha"], labels=labels, rules=rules, primary_rule="alpha",
                          bucket_rule="logit_sum", info={"alpha": alpha}, score_kind="probabilities",
                          rule_kinds={"alpha": "probabilities", "paper": "probabilities"})
