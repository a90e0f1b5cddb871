"""``tau_norm``: τ-normalised stage-1 classifier (Kang et al.; docs/algorithms.md#tau-normalisation).

The stage-1 joint classifier W (saved by the stage-1 ``features`` stages), bias dropped, rows
rescaled W̃_k = W_k / ‖W_k‖^τ; logit_k = f·W̃_k on raw features. τ is swept over 0, 0.1, …, 2.0
and chosen by the best mean per-class accuracy on VAL (the official decoupling script's "overall"; ties → smallest
τ); the evaluation split is scored once, with that τ. The chosen τ and the whole sweep are kept
in the result's ``info``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import (ConfigError, DEFAULT_TAUS, HeadData, HeadEnv, HeadFit, HeadMethod, METHODS,
    RunContext, register_section, select_tau, tau_normalize)
from ltrbench.methods._decoupling import stage1_features


@register_section("tau_norm")
@dataclass(frozen=True)
class TauNormConfig:
    taus: tuple[float, ...] = DEFAULT_TAUS  # the decoupling code's sweep: 0, 0.1, …, 2.0

    def check(self) -> None:
        if not self.taus or any(t < 0 for t in self.taus):
            raise ConfigError(f"tau_norm.taus={list(self.taus)}: give at least one τ, each at least 0.")


@METHODS.register("tau_norm")
class TauNorm(HeadMethod):
    name = "tau_norm"
    sections = ("tau_norm", "stage1")
    description = "τ-normalised stage-1 classifier, τ chosen on val"
    config_cls = TauNormConfig
    roles = ("val", "eval")

    def score_prior(self, run: RunContext) -> str:
        return "uniform"  # τ is chosen for the mean class accuracy on val: a balanced test prior

    def plan(self, run: RunContext):
        return self.plan_head(run, stage1_features(run))

    def fit_head(self, data: HeadData, cfg: TauNormConfig, env: HeadEnv) -> HeadFit:
        data.need("weight", "val_x", "val_y")
        tau, sweep = select_tau(data.weight, data.val_x, data.val_y, cfg.taus)
        w = tau_normalize(data.weight, tau)
        logits = data.eval_x @ w.T  # bias dropped (docs/algorithms.md#tau-normalisation)
        return HeadFit(logits, {"tau": tau, "sweep": {f"{t:g}": acc for t, acc in sweep.items()},
                                "selected_on": "val mean per-class accuracy"}, val_logits=data.val_x @ w.T)
