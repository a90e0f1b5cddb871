"""``ldam_drw``: LDAM with deferred re-weighting (Cao et al., NeurIPS 2019;
docs/algorithms.md#long-tail-losses).

As kaidic/LDAM-DRW: a normalised (cosine, scale 1) linear head, CE(s·(cos − m_y·1_y)) with
m_c ∝ n_c^(−1/4) (max 0.5) and s = 30; from epoch ⌊0.8·E⌋ on (the official 160 of 200) the CE is
weighted by the effective-number weights of β = 0.9999. ``ldam_drw.variant=LIFT``: LIFT's form
(margin s·m subtracted from logits a cosine head of scale s already scaled). The baseline's
recipe with instance-balanced sampling (methods/_lt_losses.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import METHODS, register_section
from ltrbench.methods._lt_losses import LossMethod


@register_section("ldam_drw")
@dataclass(frozen=True)
class LDAMDRWConfig:
    max_m: float = 0.5
    s: float = 30.0
    drw: bool = True
    drw_epoch: float = 0.8  # < 1: a fraction of the epochs; ≥ 1: the 0-based epoch
    beta: float = 0.9999
    variant: str = "official"
    sampler: str = "instance"


@METHODS.register("ldam_drw")
class LDAMDRW(LossMethod):
    name = "ldam_drw"
    loss = "ldam"
    sections = ("ldam_drw", "baseline")
    description = "LDAM with deferred re-weighting (Cao et al.) on the baseline's recipe, cosine head"
    default_run = False  # the loss family: --methods all, --table lt_losses

    def head(self, run):
        c = run.cfg.ldam_drw
        return "cosine", 1.0 if c.variant == "official" else c.s

    def score_scale(self, run):
        """The official head outputs cosines and the loss scales them by s: the logits are s · cos."""
        c = run.cfg.ldam_drw
        return c.s if c.variant == "official" else 1.0
