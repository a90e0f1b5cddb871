"""``ncm``: nearest class mean on the frozen stage-1 features (Kang et al.; docs/algorithms.md#ncm).

The official decoupling code's defaults: ``cl2n`` features (centred on the instance-weighted mean
of all training features, then L2-normalised), un-normalised class centroids, logit_k =
−‖f̃ − c_k‖². Training features are extracted with the test transform, as the decoupling code
does: the ``features`` stage always uses it. No training, no val.
"""
from __future__ import annotations

from dataclasses import dataclass

from ltrbench.plugin import (ConfigError, HeadData, HeadEnv, HeadFit, HeadMethod, METHODS, NCM_DIST_TYPES,
    NCM_FEAT_TYPES, RunContext, ncm_logits, register_section)
from ltrbench.methods._decoupling import stage1_features


@register_section("ncm")
@dataclass(frozen=True)
class NCMConfig:
    feat_type: str = "cl2n"  # cl2n | l2n | un
    dist_type: str = "l2"  # l2 | cos

    def check(self) -> None:
        if self.feat_type not in NCM_FEAT_TYPES:
            raise ConfigError(f"ncm.feat_type must be one of {', '.join(NCM_FEAT_TYPES)}, got {self.feat_type!r}.")
        if self.dist_type not in NCM_DIST_TYPES:
            raise ConfigError(f"ncm.dist_type must be one of {', '.join(NCM_DIST_TYPES)}, got {self.dist_type!r}.")


@METHODS.register("ncm")
class NCM(HeadMethod):
    name = "ncm"
    sections = ("ncm", "stage1")
    description = "NCM: nearest class mean of centred, L2-normalised stage-1 features"
    score_kind = "scores"  # negative squared distances, not trained as log-probabilities
    config_cls = NCMConfig
    roles = ("train", "eval")

    def plan(self, run: RunContext):
        run.cfg.ncm.check()
        return self.plan_head(run, stage1_features(run))

    def fit_head(self, data: HeadData, cfg: NCMConfig, env: HeadEnv) -> HeadFit:
        data.need("train_x", "train_y")
        logits = ncm_logits(data.train_x, data.train_y, data.eval_x, num_classes=data.num_classes,
                            feat_type=cfg.feat_type, dist_type=cfg.dist_type)
        return HeadFit(logits, {"feat_type": cfg.feat_type, "dist_type": cfg.dist_type})
