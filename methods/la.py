"""``la``: fine-tuning with the logit-adjusted loss (Menon et al., ICLR 2021;
docs/algorithms.md#long-tail-losses).

CE(z + log(π^τ + 1e-12)), the official code's form (``la.variant=LIFT``: LIFT's CE(z + τ log π)).
The baseline's recipe with instance-balanced sampling (methods/_lt_losses.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("la")
@dataclass(frozen=True)
class LAConfig:
    tau: float = 1.0
    variant: str = "official"
    sampler: str = "instance"


@METHODS.register("la")
class LA(LossMethod):
    name = "la"
    loss = "logit_adjusted"
    sections = ("la", "baseline")
    description = "Logit-adjusted loss (Menon et al.) on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
