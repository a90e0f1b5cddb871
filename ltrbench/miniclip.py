"""Mini-CLIP: the built-in world's stand-in for OpenAI's CLIP weights.

The tiny ``mini-clip`` open_clip model is pretrained once by ordinary image–caption contrastive
learning (open_clip's ``ClipLoss``) on the world's separate caption corpus (``clip_pretrain.tsv``:
images over every attribute combination, captions naming one to three attributes, never a class
name), with the one training loop. The result is a state-dict file that is then loaded exactly as
real CLIP weights are (``open_clip.create_model(name, pretrained=<file>)``), which makes
"CLIP-initialised", zero-shot and distillation meaningful on a laptop.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import open_clip
import torch

from dataclasses import asdict, dataclass

from .backbones import create_clip, tokenizer
from .config import TrainConfig, register_section
from .data.batched import BatchLoader
from .data.images import open_rgb
from .data.samplers import InstanceSampler
from .train import fit, seed_everything


@register_section("miniclip")
@dataclass(frozen=True)
class MiniClipConfig:
    """Mini-CLIP's pretraining recipe (BUILTIN_WORLD.md: plain CLIP loss, batch 256, AdamW lr 1e-3)."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.1
    warmup_epochs: int = 0  # the official schedule would spend 2 epochs at 1e-6 with W = 1
    min_lr: float = 1e-5
    augment: str = "light"


DEFAULT_RECIPE = asdict(MiniClipConfig())


def read_captions(folder: Path) -> tuple[np.ndarray, list[str]]:
    """The caption corpus: all images as one N×H×W×3 uint8 array, and their captions."""
    lines = (folder / "clip_pretrain.tsv").read_text(encoding="utf-8").splitlines()
    pairs = [ln.split("\t", 1) for ln in lines if ln.strip()]
    images = np.stack([np.asarray(open_rgb(folder / p)) for p, _ in pairs])
    return images, [c for _, c in pairs]


class ClipTask:
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


def pretrain_mini_clip(
    backbone: str, builtin: Mapping[str, Any], out: Path, cache: Path, progress: bool = True
) -> dict[str, Any]:
    """Pretrain mini-CLIP on the caption corpus of the world ``builtin['world']``; save to ``out``."""
    from .data.world import WorldSpec, generate_world
    from .paths import cache_root

    spec = WorldSpec(**builtin["world"])
    folder = generate_world(cache_root() / "worlds", spec, progress=progress)
    recipe = {**DEFAULT_RECIPE, **builtin.get("recipe", {})}
    seed = int(builtin.get("seed", spec.seed))
    seed_everything(seed)
    model = create_clip(backbone, None)
    from .backbones import BACKBONES

    bspec = BACKBONES.get(backbone)
    images, captions = read_captions(folder)
    tokens = tokenizer(backbone)(captions)
    cfg = TrainConfig(epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch_size"],
                      weight_decay=recipe["weight_decay"], warmup_epochs=recipe["warmup_epochs"],
                      min_lr=recipe["min_lr"], sampler="instance")
    loader = BatchLoader(images, tokens, batch_size=cfg.batch_size, sampler=InstanceSampler(np.zeros(len(images)), seed),
                         augment=recipe["augment"], image_size=bspec.image_size, eval_resize=bspec.eval_resize,
                         mean=bspec.mean, std=bspec.std, drop_last=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev)
    res = fit(ClipTask(model), loader, cfg, out.parent / "ckpt", device=dev, seed=seed, progress=progress,
              desc="mini-CLIP pretraining")
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out)
    for p in (out.parent / "ckpt").glob("*.pt"):
        p.unlink()
    return {"history": res.history, "train_seconds": res.seconds, "captions": len(captions), "recipe": recipe}
