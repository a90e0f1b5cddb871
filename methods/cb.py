"""``cb``: the class-balanced loss by effective number (Cui et al., CVPR 2019;
docs/algorithms.md#long-tail-losses).

w_c = (1−β)/(1−β^n_c), Σw = C; ``cb.loss_type`` softmax (default), sigmoid or sigmoid_focal (γ =
``cb.gamma``), each as the official TensorFlow code reduces it; ``cb.variant=LIFT``: PyTorch's
weighted-mean softmax CE. The baseline's recipe with instance-balanced sampling
(methods/_lt_losses.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("cb")
@dataclass(frozen=True)
class CBConfig:
    beta: float = 0.9999
    loss_type: str = "softmax"
    gamma: float = 0.5
    variant: str = "official"
    sampler: str = "instance"


@METHODS.register("cb")
class CB(LossMethod):
    name = "cb"
    loss = "class_balanced"
    sections = ("cb", "baseline")
    description = "Class-balanced loss (Cui et al.) on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
