"""``baseline``: a CLIP-initialised image encoder + linear head, fully fine-tuned
(docs/algorithms.md#baseline).

The paper's vision-only baseline (Tables 1–3, 8, 10): cross-entropy, square-root sampling,
AdamW with a cosine schedule. The paper leaves the trainable set and the IN/Places lr open; the
recipe here fine-tunes the whole encoder (logged in every result's config). The built-in world's
recipe (configs/synthetic_lt.yaml) was chosen on val, so every comparison is against a tuned
baseline (docs/measurements.md#recipe-choices-on-the-built-in-world).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ltrbench.plugin import (METHODS, Method, Prediction, RunContext, TrainConfig,
                             classifier_prediction, register_section)


@register_section("baseline")
@dataclass(frozen=True)
class BaselineConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, lr=1e-3, batch_size=1024, ref_batch_size=1024, sampler="sqrt", warmup_epochs=0))


@METHODS.register("baseline")
class Baseline(Method):
    name = "baseline"
    sections = ("baseline",)
    description = "CLIP image encoder + linear head, fine-tuned with square-root sampling"

    def plan(self, run: RunContext):
        model = run.finetune(run.clip_weights(), run.cfg.baseline.train, label="baseline")
        return run.evaluate(run.eval_and_val(model))  # val: the post-hoc rule's τ

    def predict(self, ctx, ds) -> Prediction:
        return classifier_prediction(ctx)  # + val: the evaluate stage records the post-hoc LA rule
