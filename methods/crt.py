"""``crt``: classifier re-training on the frozen stage-1 features (Kang et al.;
docs/algorithms.md#crt).

A new Linear(D→C) with bias and PyTorch's default initialisation (the stage-1 classifier is not
loaded) is trained with cross-entropy on the cached stage-1 training features, drawn by the
class-aware sampler (4 per class); SGD momentum 0.9, cosine to 0 stepped at the start of each
epoch; the epoch with the best val top-1 is kept, then the evaluation split is scored once.
Weight decay applies to the bias too (the official decoupling code's plain SGD).

Features come from the evaluation transform, extracted once; the official decoupling code passes
augmented images through the frozen backbone every epoch, in train mode (so its BatchNorm
statistics drift under class-balanced batches). bench/heads.py measures that path against this one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ltrbench.plugin import (CRTHead, HeadData, METHODS, RunContext, TrainConfig, TrainedHeadMethod,
    register_section)
from ltrbench.methods._decoupling import decoupling_recipe, decoupling_tiny, stage1_features


@register_section("crt")
@dataclass(frozen=True)
class CRTConfig:
    # ImageNet-LT: 10 epochs (Places-LT: lr 0.1, batch 256; iNat: 30 epochs, weight decay 1e-4).
    train: TrainConfig = field(default_factory=lambda: decoupling_recipe(10))
    tiny = staticmethod(decoupling_tiny)  # the conformance test's size


@METHODS.register("crt")
class CRT(TrainedHeadMethod):
    name = "crt"
    sections = ("crt", "stage1")
    description = "cRT: a new linear classifier re-trained class-balanced on frozen stage-1 features"
    config_cls = CRTConfig
    roles = ("train", "val", "eval")
    decay_all = True

    def plan(self, run: RunContext):
        return self.plan_head(run, stage1_features(run))

    def make_head(self, data: HeadData, cfg: CRTConfig) -> CRTHead:
        data.need("train_x")
        return CRTHead(data.train_x.shape[1], data.num_classes)
