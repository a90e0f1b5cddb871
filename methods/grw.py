"""``grw``: generalised re-weighting (DisAlign, Zhang et al., CVPR 2021;
docs/algorithms.md#long-tail-losses): CE weighted by π_c^(−p), mean 1, p = ``grw.exponent``
(DisAlign's 1.2 on ImageNet-LT; LIFT uses 1.0). Single stage, on the baseline's recipe with
instance-balanced sampling (methods/_lt_losses.py); DisAlign applies it in its second stage only."""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("grw")
@dataclass(frozen=True)
class GRWConfig:
    exponent: float = 1.2
    sampler: str = "instance"


@METHODS.register("grw")
class GRW(LossMethod):
    name = "grw"
    loss = "generalized_reweight"
    sections = ("grw", "baseline")
    description = "Generalised re-weighting (DisAlign's GRW) on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
