"""``lade``: LADE (Hong et al., CVPR 2021; docs/algorithms.md#long-tail-losses): the prior-adjusted CE plus
``lade.estim_loss_weight`` · the regularised DV estimate with λ = ``lade.remine_lambda`` (official:
0.1, 0.1 on ImageNet-LT and Places-LT; 0.5, 0.05 on iNat, set in configs/inat2018.yaml). The
baseline's recipe with instance-balanced sampling (methods/_lt_losses.py)."""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("lade")
@dataclass(frozen=True)
class LADEConfig:
    remine_lambda: float = 0.1
    estim_loss_weight: float = 0.1
    variant: str = "official"
    sampler: str = "instance"


@METHODS.register("lade")
class LADE(LossMethod):
    name = "lade"
    loss = "lade_loss"
    sections = ("lade", "baseline")
    description = "LADE (Hong et al.) on the baseline's recipe"
    default_run = False  # the loss family: --methods all, --table lt_losses
