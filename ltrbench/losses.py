"""Stage-1 (CVLP) losses: class-wise contrastive loss, logit and feature distillation.

This module owns the loss math of ALGORITHMS.md §1 and nothing else: pure functions on
tensors, no models, no I/O. Where the paper (P) and the official code (C) differ, the default
is C's behaviour (averaged symmetric loss with ε = 0.1 smoothing; full-row soft distillation).

``logit_scale`` is always the *multiplier* s = exp(learned log-scale), a float or a 0-d tensor,
as open_clip's losses take it (a tensor keeps its gradient).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LOSSES

DISTILL_TYPES = ("logits", "feature", "none")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-Σ_j targets_ij · log_softmax(logits_i)_j``."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(targets.to(log_p.dtype) * log_p).sum(dim=-1).mean()


def clip_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: float | Tensor) -> Tensor:
    """B×B image→text logits Z = s · Î Tᵀ of the L2-normalised embeddings (ALGORITHMS §1 "Logits")."""
    return logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def class_contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale: float | Tensor,
    smoothing: float = 0.1,
) -> Tensor:
    """Class-wise contrastive loss L_ccl, ALGORITHMS §1 "Loss (smoothCE)" (C's form of P's Eq. 2).

    Y_ij = 1[y_i = y_j], Q = Y with rows normalised; with ε = ``smoothing``,
    ℓ(Z,Q) = mean_i[(1-ε)(-Σ_j Q_ij log softmax(Z_i)_j) + ε(-(1/B) Σ_j log softmax(Z_i)_j)]
    and L = ½[ℓ(Z,Q) + ℓ(Zᵀ,Q)]. Q is symmetric, so one Q serves both directions. With distinct
    labels and ε = 0 this is CLIP's symmetric loss ½[CE(Z, arange) + CE(Zᵀ, arange)].
    """
    return _smoothed_class_ce(clip_logits(image_emb, text_emb, logit_scale), labels, smoothing)


def _smoothed_class_ce(z: Tensor, labels: Tensor, smoothing: float) -> Tensor:
    """½[ℓ(Z,Q) + ℓ(Zᵀ,Q)] from the logits; targets at least float32 (ε/B is subnormal in fp16)."""
    same = (labels[:, None] == labels[None, :]).to(torch.promote_types(z.dtype, torch.float32))
    q = same / same.sum(dim=1, keepdim=True)
    # ℓ is linear in the target, so the ε-term folds into one smoothed target (1-ε)Q + ε/B.
    target = (1.0 - smoothing) * q + smoothing / z.shape[1]
    return 0.5 * (soft_cross_entropy(z, target) + soft_cross_entropy(z.T, target.T))


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Logit distillation L_dis, ALGORITHMS §1 "Distillation" (C's full-row form of P's Eq. 3).

    On the B×B image→text logit matrices Z (student) and Z′ (teacher):
    KD(Z,Z′) = mean_i[-Σ_j softmax(Z′_i)_j log softmax(Z_i)_j], temperature 1, and
    L = ½[KD(Z,Z′) + KD(Zᵀ,Z′ᵀ)]. The teacher is detached (no gradient).
    """
    teacher = teacher_logits.detach()
    kd_i2t = soft_cross_entropy(student_logits, F.softmax(teacher, dim=-1))
    kd_t2i = soft_cross_entropy(student_logits.T, F.softmax(teacher.T, dim=-1))
    return 0.5 * (kd_i2t + kd_t2i)


def feature_distillation_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Feature-level distillation (Table 9 "Feature"), which C does not implement.

    ASSUMPTION (ALGORITHMS §7 Table 9 note): mean over the batch of the squared Euclidean
    distance between the L2-normalised student and teacher embeddings, summed over dimensions
    and not halved: mean_i ‖ŝ_i − t̂_i‖² = mean_i (2 − 2 cos(s_i, t_i)), in [0, 4]. Summing over
    dimensions keeps the scale independent of D. The teacher is detached.
    """
    s = F.normalize(student_emb, dim=-1)
    t = F.normalize(teacher_emb.detach(), dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


class CVLPLoss(NamedTuple):
    """The stage-1 total and its two parts (``dis`` is a zero tensor when distillation is off)."""

    total: Tensor
    ccl: Tensor
    dis: Tensor


def cvlp_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale: float | Tensor,
    *,
    distill: str = "logits",
    beta: float = 0.5,
    teacher_image_emb: Tensor | None = None,
    teacher_text_emb: Tensor | None = None,
    teacher_logit_scale: float | Tensor = 100.0,
    smoothing: float = 0.1,
) -> CVLPLoss:
    """Stage-1 objective L_pre = (1-β)·L_ccl + β·L_dis (ALGORITHMS §1 "Total"; β is Table 9's λ).

    ``image_emb``/``text_emb`` are the student's B×D outputs for paired images and sentences;
    ``labels`` (B,) the image classes. ``distill`` picks L_dis:

    - ``"logits"`` (C's default): :func:`distillation_loss` between the student's Z and the
      teacher's Z′ = ``teacher_logit_scale`` · Î′ T′ᵀ (the frozen CLIP teacher's own scale, 100).
    - ``"feature"``: the mean of :func:`feature_distillation_loss` over the image and the text
      embeddings (an assumption, see that function).
    - ``"none"``: no teacher; the total is L_ccl itself, whatever ``beta`` is (Table 4 rows 3-4,
      Table 9 row λ = 0).

    The teacher embeddings are required unless ``distill == "none"``; they are detached.
    Returns (total, ccl, dis) so the caller can log the parts.
    """
    if distill not in DISTILL_TYPES:
        raise ValueError(f"distill must be one of {DISTILL_TYPES}, got {distill!r}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    student = clip_logits(image_emb, text_emb, logit_scale)
    ccl = _smoothed_class_ce(student, labels, smoothing)
    if distill == "none":
        return CVLPLoss(ccl, ccl, torch.zeros_like(ccl))
    if teacher_image_emb is None or teacher_text_emb is None:
        raise ValueError(f"distill={distill!r} needs teacher_image_emb and teacher_text_emb")
    if distill == "logits":
        with torch.no_grad():
            teacher = clip_logits(teacher_image_emb, teacher_text_emb, teacher_logit_scale)
        dis = distillation_loss(student, teacher)
    else:
        dis = 0.5 * (
            feature_distillation_loss(image_emb, teacher_image_emb)
            + feature_distillation_loss(text_emb, teacher_text_emb)
        )
    return CVLPLoss((1.0 - beta) * ccl + beta * dis, ccl, dis)


# --------------------------------------------------------------------------------------------
# Classification losses by name, for the ``finetune`` stage (its ``loss``). A registered loss is a
# factory ``make(train_counts, **params) -> loss(logits, targets)``: the training counts per class
# are there for losses that depend on the label distribution (logit adjustment, balanced softmax).


@LOSSES.register("ce")
def cross_entropy(train_counts: np.ndarray | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Plain cross-entropy (the baseline and the decoupling stage 1)."""
    return F.cross_entropy
