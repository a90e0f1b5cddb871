"""``lift``: LIFT (Shi et al., ICML 2024; github:shijxcs/LIFT; docs/algorithms.md#lift).

A fine-tuning module added to the CLIP image tower (``lift.peft``, default AdaptFormer; every
module of :mod:`ltrbench.peft`), a cosine classifier (scale 25) on the pre-projection class-token
feature (``ln_post`` output, CLIP's ``proj`` dropped), initialised from the text features of "a
photo of a {class}." mapped back through the image projection and normalised (LIFT's
``init_head_text_feat``), trained with the logit-adjusted loss (τ = 1, LIFT's form) by SGD
(lr 0.01, momentum 0.9, weight decay 5e-4 on every trained tensor), batch 128, cosine per epoch
without warm-up, 10 epochs (20 on iNat), fp16 autocast on CUDA. ``lift.loss`` trains with another
registered loss (``ldam``, ``class_balanced``, …) in LIFT's parameterisation (:data:`LIFT_LOSS_PARAMS`; ``lift.loss_variant=official``
for the official one).

Inference rules, each scored and recorded: ``single_crop`` (LIFT's test transform: short side to
S·8/7, centre crop S), ``five_crop`` (LIFT's TTE: short side to S·248/224, five crops, mean of
the logits), ``posthoc_la`` (post-hoc logit adjustment of the primary rule, τ chosen on val). The
primary rule is ``five_crop`` with ``lift.tte`` (LIFT's headline numbers), else ``single_crop``.
The resizes' interpolation is ``lift.interpolation`` (LIFT: bilinear, torchvision's default;
LIFT+: bicubic), recorded with every result.

``lift.variant=plus`` is LIFT+'s recipe (github:shijxcs/LIFT-plus): 5 epochs at lr 0.02 (15 on
iNat, set in configs/inat2018.yaml), bicubic resizing, random crops without flips. Not ported:
LIFT+'s epoch-dependent crop scale (its ``MinimalistRandomResizedCrop``), its fp16 test.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ltrbench.plugin import (LOSSES, METHODS, ClassifierTask, ConfigError, CosineHead, Method, Prediction, Reads,
                             RunContext, StageContext, TrainConfig, crops_loader, dataset_of, device, encode_texts,
                             image_settings, load_array, load_model, loss_prior, parameter_counts, peft, posthoc_rule,
                             read_manifest, register_section, save_array, stage_kind, train_loader)

#: LIFT's parameterisation of each loss (its trainer.py/utils/losses.py): used unless
#: ``lift.loss_variant=official``, which takes the losses' official defaults.
LIFT_LOSS_PARAMS: dict[str, dict[str, Any]] = {
    "ce": {},
    "logit_adjusted": {"tau": 1.0, "variant": "LIFT"},
    "balanced_softmax": {},
    "ldam": {"s": 25.0, "drw": False, "variant": "LIFT"},
    "class_balanced": {"beta": 0.9999, "variant": "LIFT"},
    "softmax_focal": {"gamma": 2.0},
    "generalized_reweight": {"exponent": 1.0},
    "lade_loss": {"remine_lambda": 0.1, "estim_loss_weight": 0.1, "variant": "LIFT"},
}
VARIANTS = ("lift", "plus")


@register_section("lift")
@dataclass(frozen=True)
class LiftConfig:
    peft: str = "adaptformer"
    bottleneck: int = 0  # 0: LIFT's rule 2^max(0, ⌊log2(C/2L)⌋)
    vpt_len: int = 10
    blocks: int = 1  # peft=partial: the last k blocks
    mask_ratio: float = 0.0  # peft=mask; 0: LIFT's C/(12·L·D) floored to 0.001
    mask_seed: int = 0
    ssf_init: str = "random"
    loss: str = "logit_adjusted"
    loss_variant: str = "lift"  # lift | official
    scale: float = 25.0
    template: str = "a photo of a {}."
    head_init: str = "text"  # text | random
    tte: bool = True
    interpolation: str = "bilinear"
    augment: str = "crop_flip"
    variant: str = "lift"  # lift | plus
    plus_epochs: int = 5  # lift.variant=plus: LIFT+'s epochs (15 on iNat)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=10, lr=0.01, batch_size=128, ref_batch_size=128, optimizer="sgd", weight_decay=5e-4, momentum=0.9,
        warmup_epochs=0, schedule_shift=0, sampler="instance", amp="fp16"))


def plus_recipe(c: LiftConfig) -> LiftConfig:
    """LIFT+'s changes to a LIFT recipe: ``plus_epochs`` epochs (5; 15 on iNat), twice the lr (0.02),
    bicubic resizing, no flips."""
    train = dataclasses.replace(c.train, epochs=c.plus_epochs, lr=2 * c.train.lr)
    return dataclasses.replace(c, train=train, interpolation="bicubic", augment="crop_bicubic")


class LiftModel(nn.Module):
    """The PEFT-augmented tower (projection dropped) + the cosine head."""

    def __init__(self, visual: nn.Module, head: CosineHead) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


class LiftTask(ClassifierTask):
    """ClassifierTask with LIFT's optimiser groups: weight decay on every trained tensor."""

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.named_parameters()), "decay_all": True}]


def peft_options(c: LiftConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if c.peft in ("adaptformer", "adapter", "lora") and c.bottleneck:
        out["bottleneck"] = c.bottleneck
    if c.peft in ("vpt_shallow", "vpt_deep"):
        out["vpt_len"] = c.vpt_len
    if c.peft == "partial":
        out["blocks"] = c.blocks
    if c.peft == "mask":
        out.update(mask_seed=c.mask_seed, **({"mask_ratio": c.mask_ratio} if c.mask_ratio else {}))
    if c.peft == "ssf":
        out["ssf_init"] = c.ssf_init
    return out


def _sizes(image_size: int) -> dict[str, int]:
    """LIFT's test resizes at 224 px (256 and 248), scaled to the input size."""
    return {"single": image_size * 8 // 7, "five": round(image_size * 248 / 224)}


@torch.no_grad()
def _score(model: nn.Module, ds, split: str, img, dev, *, resize: int, crops: int, interpolation: str):
    model.eval()
    logits, labels = [], []
    for x, y in crops_loader(ds, split, img, resize=resize, crops=crops, interpolation=interpolation):
        b, k = x.shape[:2]
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=dev.type == "cuda"):
            z = model(x.flatten(0, 1).to(dev)).float().view(b, k, -1).mean(1)
        logits.append(z.cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64)


@dataclass(frozen=True)
class LiftStageConfig:
    """The ``lift`` stage's config: the run's data set and image settings (with LIFT's
    augmentation), the resolved ``lift`` section, and the splits scored after training."""

    dataset: Mapping[str, Any]
    image: Mapping[str, Any]
    lift: LiftConfig
    score_splits: tuple[str, ...]


@stage_kind("lift", version="1", gpus=1.0, memory_gb=6.0, loader=True, config=LiftStageConfig, inputs=("clip",),
            reads=lambda c: Reads(splits=tuple(dict.fromkeys(("train", *c.score_splits)))))
def lift_stage(ctx: StageContext) -> dict[str, Any]:
    c: LiftConfig = ctx.config.lift
    cfg = c.train
    ds, img, dev = dataset_of(ctx), image_settings(ctx), device()
    img = dataclasses.replace(img, augment=c.augment)
    man = read_manifest(ctx.input("clip"))
    clip = load_model(ctx.input("clip"), "cpu", image_size=img.image_size)
    visual = clip.visual
    torch.manual_seed(ctx.seed)
    width = int(visual.ln_post.weight.shape[0])
    head = CosineHead(width, ds.num_classes, c.scale)
    if c.head_init == "text":
        sentences = [c.template.format(n.replace("_", " ")) for n in ds.classnames]
        text = torch.from_numpy(encode_texts(clip, man["backbone"], sentences, dev, progress=ctx.progress))
        text = F.normalize(text, dim=-1) @ visual.proj.detach().float().cpu().T
        with torch.no_grad():
            head.weight.copy_(F.normalize(text, dim=-1))
    visual.proj = None  # LIFT's feature: ln_post(CLS), without CLIP's projection
    del clip.transformer, clip.token_embedding  # the text tower is not needed any more
    options = peft_options(c)
    added = peft.attach(visual, c.peft, ds.num_classes, **options)
    model = LiftModel(visual, head).to(dev)
    params = dict(LIFT_LOSS_PARAMS.get(c.loss, {})) if c.loss_variant == "lift" else {}
    loss_fn = LOSSES.get(c.loss)(ds.train_counts(), **params)
    loader = train_loader(ds, img, sampler=cfg.sampler, batch_size=cfg.batch_size, seed=ctx.seed)
    res = ctx.train(LiftTask(model, cfg, loss_fn), loader, cfg, device=dev, seed=ctx.seed)
    sizes = _sizes(img.image_size)
    for split in ctx.config.score_splits:
        for rule, crops in (("single_crop", 1), ("five_crop", 5)):
            if rule == "five_crop" and not c.tte:
                continue
            z, y = _score(model, ds, split, img, dev, resize=sizes["single" if crops == 1 else "five"], crops=crops,
                          interpolation=c.interpolation)
            save_array(ctx.out, f"logits_{split}_{rule}", z.astype(np.float32))
            save_array(ctx.out, f"labels_{split}", y)
    counts = parameter_counts(model, [*added, *head.parameters()])
    counts["peft_added"] = peft.count(added)
    return {**res.info, "loss": c.loss, "loss_params": params, "params": counts,
            "peft": peft.describe(visual, c.peft, ds.num_classes, **options),
            "transforms": {"train": f"{c.augment} (interpolation: {'bilinear' if c.augment == 'crop_flip' else 'bicubic'})",
                           "single_crop": f"resize {sizes['single']} ({c.interpolation}) + centre crop {img.image_size}",
                           "five_crop": f"resize {sizes['five']} ({c.interpolation}) + five crops {img.image_size}"}}


def check_backbone(name: str) -> None:
    """LIFT needs a ViT tower (its feature is the class token before the projection)."""
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(f"lift needs a ViT image tower and {name} is a ResNet: LIFT's feature is the class token "
                          "before the projection. Use a ViT backbone (e.g. --backbone ViT-B-16); on a ResNet, "
                          f"lift.peft could only be one of {', '.join(peft.RESNET_MODULES)}.")


@METHODS.register("lift")
class Lift(Method):
    name = "lift"
    sections = ("lift",)
    description = "LIFT: AdaptFormer (or any lift.peft module) + cosine head, logit-adjusted loss, five-crop TTE"

    def score_prior(self, run: RunContext) -> str:
        c = run.cfg.lift
        params = dict(LIFT_LOSS_PARAMS.get(c.loss, {})) if c.loss_variant == "lift" else {}
        return loss_prior(c.loss, params, c.train.sampler)

    def plan(self, run: RunContext):
        c = run.cfg.lift
        if c.variant not in VARIANTS:
            raise ConfigError(f"lift.variant={c.variant!r}: use one of {', '.join(VARIANTS)}.")
        if c.variant == "plus":
            c = plus_recipe(c)
        if c.peft not in peft.PEFT_MODULES:
            raise ConfigError(f"lift.peft={c.peft!r}: use one of {', '.join(peft.PEFT_MODULES)}.")
        check_backbone(run.backbone)
        LOSSES.get(c.loss)
        if c.loss_variant not in ("lift", "official"):
            raise ConfigError(f"lift.loss_variant={c.loss_variant!r}: use lift or official.")
        val = "val" if "val" in run.ds.splits else run.eval_split
        splits = list(dict.fromkeys([run.eval_split, val]))
        img = dataclasses.replace(run.img, augment=c.augment)
        conf = LiftStageConfig(run.dataset_key(), img.key(), c, tuple(splits))
        stage = run.stage("lift", conf, {"clip": run.clip_weights()}, label=f"lift[{c.peft}]")
        return run.evaluate({"lift": stage}, val_split=val, primary="five_crop" if c.tte else "single_crop")

    def predict(self, ctx, ds) -> Prediction:
        folder = ctx.input("lift")
        ev, val, primary = ctx.config.split, ctx.config.params["val_split"], ctx.config.params["primary"]
        rules = {r: load_array(folder, f"logits_{ev}_{r}") for r in ("single_crop", "five_crop")
                 if (folder / f"logits_{ev}_{r}.npy").is_file()}
        adjusted, info = posthoc_rule(rules[primary], load_array(folder, f"logits_{val}_{primary}"),
                                      load_array(folder, f"labels_{val}"), ds.train_counts())
        rules["posthoc_la"] = adjusted
        return Prediction(scores=rules[primary], labels=load_array(folder, f"labels_{ev}"), rules=rules,
                          primary_rule=primary, info=info)
