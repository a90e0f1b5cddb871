"""``fc``: Table 4 row 5, a linear head on the frozen CVLP-pretrained image encoder (docs/algorithms.md#fc-head).

The CVLP visual encoder + Linear(D→C), no text, one cross-entropy term, with LGR's fine-tuning
recipe where it applies to a frozen encoder: AdamW (weight decay 0.05, none on the bias), cosine
with no warm-up to 0 stepped as the official code does, square-root sampler, the final epoch
kept; the head is initialised like LGR's MLP (truncated normal, std 0.02; zero bias). Trained on
the cached features of the CVLP encoder (extracted once under the evaluation transform), so LGR's
image augmentation and mixup/CutMix do not apply. ``encoder: clip`` uses the raw CLIP weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ltrbench.plugin import (ConfigError, HeadData, METHODS, RunContext, TrainConfig, TrainedHeadMethod,
    register_section)
from ltrbench.methods._cvlp import ENCODERS, encoder_stage


@register_section("fc")
@dataclass(frozen=True)
class FCConfig:
    encoder: str = "cvlp"  # cvlp (Table 4 row 5) | clip
    # LGR's ImageNet-LT recipe (docs/algorithms.md#lgr-parameters-and-learning-rates): lr 1e-3 at
    # global batch 1024 (128 × 8 GPUs), 50 epochs, AdamW wd 0.05.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=50, lr=1e-3, batch_size=1024, ref_batch_size=1024, optimizer="adamw", weight_decay=0.05,
        warmup_epochs=0, min_lr=0.0, sampler="sqrt"))

    def check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"fc.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}.")


def fc_head(dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


@METHODS.register("fc")
class FC(TrainedHeadMethod):
    name = "fc"
    sections = ("fc",)
    description = "FC: a linear head on the frozen CVLP image encoder (Table 4)"
    config_cls = FCConfig
    roles = ("train", "val", "eval")  # val: the post-hoc rule's τ (and fc.train.select_best)

    def plan(self, run: RunContext):
        c = run.cfg.fc
        c.check()
        return self.plan_head(run, run.split_features(encoder_stage(run, c.encoder)))

    def make_head(self, data: HeadData, cfg: FCConfig) -> nn.Linear:
        data.need("train_x")
        return fc_head(data.train_x.shape[1], data.num_classes)
