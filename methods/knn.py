"""``knn``: Table 4 row 6, the text KNN head of the CVLP-pretrained encoders (docs/algorithms.md#knn-head).

No training. Each evaluation image's raw embedding is compared by cosine with the embedding of
every sentence of every class (the whole corpus, prompts + wiki, as the official ``knn_5``
metric); the k = 5 most similar sentences vote, a tie going to the tied class ranked highest.
Scores are the one-hot of the voted class. ``encoder: clip`` runs the same head on the raw CLIP
weights (no CVLP).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from ltrbench.plugin import (ConfigError, HeadData, HeadEnv, HeadFit, HeadMethod, METHODS, RunContext,
    knn_predict, register_section)
from ltrbench.methods._cvlp import ENCODERS, encoder_stage


@register_section("knn")
@dataclass(frozen=True)
class KNNConfig:
    encoder: str = "cvlp"  # cvlp (Table 4 row 6) | clip (the raw CLIP weights)
    k: int = 5
    source: str = "wiki_prompt"  # the sentences searched: wiki_prompt (the official corpus) | prompt_only

    def check(self) -> None:
        if self.encoder not in ENCODERS:
            raise ConfigError(f"knn.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}.")
        if self.k < 1:
            raise ConfigError(f"knn.k must be at least 1, got {self.k}.")


@METHODS.register("knn")
class KNN(HeadMethod):
    name = "knn"
    sections = ("knn",)
    description = "KNN: majority class of the 5 nearest corpus sentences (CVLP encoders, Table 4)"
    score_kind = "scores"  # votes, not trained as log-probabilities
    config_cls = KNNConfig
    roles = ("eval",)

    def plan(self, run: RunContext):
        c = run.cfg.knn
        c.check()
        enc = encoder_stage(run, c.encoder)
        feats = {"eval": run.features(enc, run.eval_split)}
        return self.plan_head(run, feats, extra={"text": run.text_features(enc, c.source)})

    def fit_head(self, data: HeadData, cfg: KNNConfig, env: HeadEnv) -> HeadFit:
        data.need("text_x", "text_y")
        dev = env.device
        preds = knn_predict(data.text_x.to(dev), data.text_y.to(dev), data.eval_x.to(dev), k=cfg.k).cpu()
        return HeadFit(F.one_hot(preds, data.num_classes).float(),
                       {"k": cfg.k, "sentences": len(data.text_y), "encoder": cfg.encoder})
