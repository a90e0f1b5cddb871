"""The long-tail loss family (docs/algorithms.md#long-tail-losses): ``la``, ``bs``, ``ldam_drw``, ``cb``, ``focal``,
``grw``, ``lade``, each the baseline's fine-tuning recipe (``baseline.train``: epochs, lr,
batch) with its loss from :mod:`ltrbench.losses` and instance-balanced sampling (the losses
correct for the training prior themselves, as in every one of their official codes; the
baseline's square-root sampler would correct twice). ``<method>.sampler`` changes that.

Every run also records the post-hoc logit adjustment (Menon et al.) as the inference rule
``posthoc_la``: τ chosen on val over :data:`ltrbench.losses.POSTHOC_TAUS`, then the evaluation
logits adjusted (``info.posthoc_tau``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ltrbench.plugin import Method, Prediction, RunContext, classifier_prediction, loss_prior


class LossMethod(Method):
    """A method = the baseline's recipe + ``loss`` with the params of its own config section."""

    loss: ClassVar[str] = ""
    #: fields of the method's section that are not loss parameters
    not_loss_params: ClassVar[tuple[str, ...]] = ("sampler",)

    def loss_params(self, run: RunContext) -> dict[str, Any]:
        sec = dataclasses.asdict(getattr(run.cfg, self.name))
        return {k: v for k, v in sec.items() if k not in self.not_loss_params}

    def head(self, run: RunContext) -> tuple[str, float]:
        """The finetune stage's head and its scale (the baseline's linear head by default)."""
        return "linear", 1.0

    def score_scale(self, run: RunContext) -> float:
        """What the head's outputs are multiplied by to be the logits the loss saw (1: they are)."""
        return 1.0

    def plan(self, run: RunContext):
        train = dataclasses.replace(run.cfg.baseline.train, sampler=getattr(run.cfg, self.name).sampler)
        head, scale = self.head(run)
        model = run.finetune(run.clip_weights(), train, label=self.name, loss=self.loss,
                             loss_params=self.loss_params(run), head=head, head_scale=scale)
        scale = self.score_scale(run)
        return run.evaluate(run.eval_and_val(model), **({"score_scale": scale} if scale != 1.0 else {}))

    def score_prior(self, run: RunContext) -> str:
        return loss_prior(self.loss, self.loss_params(run), getattr(run.cfg, self.name).sampler)

    def predict(self, ctx, ds) -> Prediction:
        """The logits (times the ``score_scale`` param) on the evaluation split and val; the
        evaluate stage adds the post-hoc rule."""
        return classifier_prediction(ctx, float(ctx.config.params.get("score_scale", 1.0)))
