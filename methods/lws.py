"""``lws``: learnable weight scaling of the stage-1 classifier (Kang et al.; docs/algorithms.md#lws).

The stage-1 joint classifier's W and b (saved by the stage-1 ``features`` stages) are frozen; a
per-class scale s_k (init 1) learns, logit_k = s_k·(W_k·f + b_k), the bias scaled too. Trained on
the cached stage-1 training features with cRT's optimiser settings: class-aware sampler (4 per
class), SGD momentum 0.9, cosine stepped at epoch start, 5 epochs, weight decay on the scales
(the official decoupling code's plain SGD decays every parameter); its loop keeps the best val epoch,
as for cRT.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ltrbench.plugin import (HeadData, LWSHead, METHODS, RunContext, TrainConfig, TrainedHeadMethod,
    register_section)
from ltrbench.methods._decoupling import decoupling_recipe, decoupling_tiny, stage1_features


@register_section("lws")
@dataclass(frozen=True)
class LWSConfig:
    train: TrainConfig = field(default_factory=lambda: decoupling_recipe(5))
    tiny = staticmethod(decoupling_tiny)  # the conformance test's size


@METHODS.register("lws")
class LWS(TrainedHeadMethod):
    name = "lws"
    sections = ("lws", "stage1")
    description = "LWS: per-class scales of the frozen stage-1 classifier, learnt class-balanced"
    config_cls = LWSConfig
    roles = ("train", "val", "eval")
    decay_all = True

    def plan(self, run: RunContext):
        return self.plan_head(run, stage1_features(run))

    def make_head(self, data: HeadData, cfg: LWSConfig) -> LWSHead:
        data.need("weight")
        return LWSHead(data.weight, data.bias)

    def head_info(self, head: LWSHead) -> dict[str, Any]:
        return {"scales": head.scales.detach().cpu().tolist()}
