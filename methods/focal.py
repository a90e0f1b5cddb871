"""``focal``: the softmax focal loss (Lin et al.; LDAM-DRW's and LIFT's form, docs/algorithms.md#long-tail-losses):
mean (1 − p_y)^γ · CE, γ = ``focal.gamma``. The baseline's recipe with instance-balanced sampling
(methods/_lt_losses.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("focal")
@dataclass(frozen=True)
class FocalConfig:
    gamma: float = 2.0
    sampler: str = "instance"


@METHODS.register("focal")
class Focal(LossMethod):
    name = "focal"
    loss = "softmax_focal"
    sections = ("focal", "baseline")
    description = "Softmax focal loss on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
