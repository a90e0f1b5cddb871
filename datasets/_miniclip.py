"""Mini-CLIP: the built-in world's stand-in for OpenAI's CLIP weights (the ``builtin`` weights).

The tiny ``mini-clip`` open_clip model (``model_configs/mini-clip.json``, registered here with
``open_clip.add_model_config``, and as a backbone) is pretrained once by ordinary image–caption
contrastive learning (open_clip's ``ClipLoss``) on the world's separate caption corpus
(``clip_pretrain.tsv``: images over every attribute combination, captions naming one to three
attributes, never a class name), with the one training loop. The ``clip_weights`` stage asks the
``builtin`` weights source registered here for that file, which is then loaded exactly as real
CLIP weights are (``open_clip.create_model(name, pretrained=<file>)``). That makes
"CLIP-initialised", zero-shot and distillation meaningful on a laptop.

Pretraining on the default world takes about three minutes of a 2-core machine, so the weights of
the default world and recipe ship with the code (``datasets/miniclip/``: ``mini-clip-builtin.pt``
and its record ``mini-clip-builtin.json``, written by ``python bench/miniclip_weights.py``), as real
CLIP weights come pretrained. The ``clip_weights`` stage copies the shipped file only when the
record's stage key is the stage's own key (the same world, recipe, backbone and kind version) and
the file's SHA-256 is the recorded one; any other world or recipe is pretrained as before, and
``LTRBENCH_PRETRAIN_MINICLIP=1`` pretrains even the default (what the bench script does to rebuild
and compare). The stage's ``stage.json`` says which (``source``: ``shipped`` or ``pretrained``).
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import open_clip
import torch

from ltrbench.plugin import (BACKBONES, BackboneSpec, BatchLoader, BenchConfig, ConfigError, InstanceSampler,
    LtrBenchError, StageContext, TrainConfig, WEIGHTS, cache_root, create_clip, file_sha256, open_rgb,
    register_section, seed_everything, stage_device, tokenizer, train_problems)
from ltrbench.datasets._world import WorldSpec, generate_world

BUILTIN_PRETRAINED = "builtin"  # the backbone.pretrained tag of mini-CLIP's generated weights
SHIPPED = Path(__file__).resolve().parent / "miniclip" / "mini-clip-builtin.pt"  # the default world's weights
SHIPPED_RECORD = SHIPPED.with_suffix(".json")  # their stage key, SHA-256 and pretraining record
FORCE_PRETRAIN = "LTRBENCH_PRETRAIN_MINICLIP"  # set to 1: pretrain even where shipped weights fit

open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
BACKBONES.add("mini-clip", BackboneSpec("mini-clip", image_size=32, eval_resize=32, embed_dim=64,
                                        default_pretrained=BUILTIN_PRETRAINED))


@register_section("miniclip")
@dataclass(frozen=True)
class MiniClipConfig:
    """Mini-CLIP's pretraining recipe (the prototype's: plain CLIP loss, batch 256, AdamW lr 1e-3;
    docs/datasets.md#the-prototype-it-follows)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.1
    warmup_epochs: int = 0  # the official schedule would spend 2 epochs at 1e-6 with W = 1
    min_lr: float = 1e-5
    augment: str = "light"

    def check(self) -> None:
        """The recipe is a training recipe: the same ranges as ``train`` sections (ltrbench.validate)."""
        problems = train_problems(TrainConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                              weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs,
                                              min_lr=self.min_lr), "miniclip")
        if self.augment not in ("light", "none"):
            problems.append(f"miniclip.augment={self.augment}: use light or none (whole-batch augmentation)")
        if problems:
            raise ConfigError("; ".join(problems) + ".")


DEFAULT_RECIPE = asdict(MiniClipConfig())


def read_captions(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The caption corpus: all images as one N×H×W×3 uint8 array, and their captions."""
    lines = (folder / "clip_pretrain.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [ln.split("\t", 1) for ln in lines if ln.strip()]
    images = np.stack([np.asarray(open_rgb(folder / p)) for p, _ in pairs])
    return images, [c for _, c in pairs]


class ClipTask:
    """Plain CLIP pretraining: open_clip's symmetric InfoNCE over image–caption pairs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.module = model
        self.loss_fn = open_clip.ClipLoss()

    def param_groups(self):
        return [{"params": list(self.module.named_parameters())}]

    def set_mode(self) -> None:
        self.module.train()

    def loss(self, batch) -> torch.Tensor:
        x, t = batch
        img = self.module.encode_image(x, normalize=True)
        txt = self.module.encode_text(t, normalize=True)
        return self.loss_fn(img, txt, self.module.logit_scale.exp())

    def validate(self):
        return None


def pretrain_mini_clip(ctx: StageContext, backbone: str, builtin: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Pretrain mini-CLIP on the caption corpus of the world ``builtin['world']``; save to ``out``."""
    spec = WorldSpec(**builtin["world"])
    folder = generate_world(cache_root() / "worlds", spec, progress=ctx.progress)
    recipe = {**DEFAULT_RECIPE, **builtin.get("recipe", {})}
    seed = int(builtin.get("seed", spec.seed))
    seed_everything(seed)
    model = create_clip(backbone, None)
    bspec = BACKBONES.get(backbone)
    images, captions = read_captions(folder)
    tokens = tokenizer(backbone)(captions)
    cfg = TrainConfig(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"],
                      weight_decay=recipe["weight_decay"], warmup_epochs=recipe["warmup_epochs"],
                      min_lr=recipe["min_lr"], sampler="instance")
    loader = BatchLoader(images, tokens, batch_size=cfg.batch_size, sampler=InstanceSampler(np.zeros(len(images)), seed),
                         augment=recipe["augment"], image_size=bspec.image_size, eval_resize=bspec.eval_resize,
                         mean=bspec.mean, std=bspec.std, drop_last=True)
    dev = stage_device()  # what the executor allows this stage (it asked for a GPU where GPUs exist)
    model.to(dev)
    res = ctx.train(ClipTask(model), loader, cfg, device=dev, seed=seed, desc="mini-CLIP pretraining")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out)
    return {**res.info, "captions": len(captions), "recipe": recipe, "source": "pretrained"}


def shipped_record(key: str) -> dict[str, Any] | None:
    """The shipped weights' record when they are the weights of the stage with ``key`` (None
    otherwise, or when ``LTRBENCH_PRETRAIN_MINICLIP`` asks to pretrain)."""
    if os.environ.get(FORCE_PRETRAIN, "") not in ("", "0") or not SHIPPED_RECORD.is_file() or not SHIPPED.is_file():
        return None
    record = json.loads(SHIPPED_RECORD.read_text(encoding="utf-8"))
    return record if record.get("key") == key else None


def copy_shipped(record: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """Copy the shipped weights to ``out``, checking their SHA-256 against ``record``."""
    tmp = out.with_suffix(".copy")
    shutil.copyfile(SHIPPED, tmp)
    digest = file_sha256(tmp)
    if digest != record["sha256"]:
        tmp.unlink()
        raise LtrBenchError(f"The shipped mini-CLIP weights {SHIPPED} have SHA-256 {digest}, not the {record['sha256']} "
                            f"that {SHIPPED_RECORD} records: the file was changed or damaged. Restore it "
                            f"(git checkout -- {SHIPPED.parent}), or set {FORCE_PRETRAIN}=1 to pretrain instead.")
    os.replace(tmp, out)
    return {**record.get("info", {}), "source": "shipped", "file": SHIPPED.name, "sha256": digest}


class MiniClipWeights:
    """The ``builtin`` weights source: mini-CLIP pretrained on the configured world's captions."""

    backbones = ("mini-clip",)
    gpus = 1.0  # it trains: the clip_weights stage asks for a GPU where GPUs are used

    def key(self, cfg: BenchConfig) -> dict[str, Any]:
        """What the weights depend on (part of the clip_weights stage key): the world and the recipe."""
        return {"builtin": {"world": asdict(cfg.world), "recipe": asdict(cfg.miniclip)}}

    def build(self, ctx: StageContext, out: Path) -> dict[str, Any]:
        record = shipped_record(ctx.stage.key)
        if record is not None:  # the default world and recipe: the weights that ship with the code
            return copy_shipped(record, out)
        return pretrain_mini_clip(ctx, ctx.config.backbone, ctx.config.generated["builtin"], out)


WEIGHTS.add(BUILTIN_PRETRAINED, MiniClipWeights())
