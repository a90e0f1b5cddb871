"""``zeroshot``: zero-shot CLIP (Table 8), class prototypes from the text encoder.

Each class prototype is the mean of the L2-normalised embeddings of its sentences, re-normalised,
and an image is assigned to the class of highest cosine (docs/algorithms.md#zero-shot-clip). The sentences are
the 80 prompt templates by default (``zeroshot.source: prompt_only``); ``wiki_prompt`` uses the
whole corpus as the official ``--ensemble`` mode does (the paper does not say which it used).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ltrbench.plugin import (ConfigError, METHODS, Method, Prediction, RunContext, SOURCES, load_array,
    register_section)


@register_section("zeroshot")
@dataclass(frozen=True)
class ZeroShotConfig:
    source: str = "prompt_only"  # prompt_only | wiki_prompt

    def check(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"zeroshot.source must be one of {', '.join(SOURCES)}, got {self.source!r}.")


def class_prototypes(text_feats: np.ndarray, class_ids: np.ndarray, num_classes: int) -> np.ndarray:
    t = text_feats / np.linalg.norm(text_feats, axis=1, keepdims=True)
    protos = np.zeros((num_classes, t.shape[1]), np.float32)
    np.add.at(protos, class_ids, t)
    return protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)


@METHODS.register("zeroshot")
class ZeroShot(Method):
    name = "zeroshot"
    sections = ("zeroshot",)
    description = "zero-shot CLIP: prompt-ensemble class prototypes, no training"

    def plan(self, run: RunContext):
        clip = run.clip_weights()
        text = run.text_features(clip, run.cfg.zeroshot.source)
        return run.evaluate({"features": run.features(clip, run.eval_split), "text_features": text})

    def predict(self, ctx, ds) -> Prediction:
        feats = ctx.input("features")
        text = ctx.input("text_features")
        protos = class_prototypes(load_array(text, "text_feats"), load_array(text, "class_ids"), ds.num_classes)
        x = np.asarray(load_array(feats, "feats"))
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        # cosine similarities, without CLIP's logit scale: scores, not logits (no oracle prior correction)
        return Prediction(scores=x @ protos.T, labels=load_array(feats, "labels"), score_kind="scores")
