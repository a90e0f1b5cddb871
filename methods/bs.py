"""``bs``: fine-tuning with balanced softmax (Ren et al., NeurIPS 2020; docs/algorithms.md#long-tail-losses):
CE(z + log n).
The baseline's recipe with instance-balanced sampling (methods/_lt_losses.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("bs")
@dataclass(frozen=True)
class BSConfig:
    sampler: str = "instance"


@METHODS.register("bs")
class BS(LossMethod):
    name = "bs"
    loss = "balanced_softmax"
    sections = ("bs", "baseline")
    description = "Balanced softmax (Ren et al.) on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
