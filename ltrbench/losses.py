"""Losses: stage 1 (CVLP; docs/algorithms.md#cvlp) and the long-tail classification losses
(docs/algorithms.md#long-tail-losses, below).

Stage 1: class-wise contrastive loss, logit and feature distillation.

This module owns the loss math (docs/algorithms.md#cvlp-loss, docs/algorithms.md#cvlp-distillation,
docs/algorithms.md#long-tail-losses) and nothing else: pure functions on tensors, no models, no
I/O. Where the paper and the official VL-LTR code differ, the default is the code's behaviour
(averaged symmetric loss with ε = 0.1 smoothing; full-row soft distillation).

``logit_scale`` is always the *multiplier* s = exp(learned log-scale), a float or a 0-d tensor,
as open_clip's losses take it (a tensor keeps its gradient).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError
from .metrics import SAMPLER_PRIOR, mean_class_accuracy
from .registry import LOSSES

DISTILL_TYPES = ("logits", "feature", "none")


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-Σ_j targets_ij · log_softmax(logits_i)_j``."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(targets.to(log_p.dtype) * log_p).sum(dim=-1).mean()


def clip_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: float | Tensor) -> Tensor:
    """B×B image→text logits Z = s · Î Tᵀ of the L2-normalised embeddings
    (docs/algorithms.md#cvlp-loss)."""
    return logit_scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T


def class_contrastive_loss(
    image_emb: Tensor,
    text_emb: Tensor,
    labels: Tensor,
    logit_scale: float | Tensor,
    smoothing: float = 0.1,
) -> Tensor:
    """Class-wise contrastive loss L_ccl, docs/algorithms.md#cvlp-loss (the official VL-LTR code's
    form of the paper's Eq. 2).

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
    """Logit distillation L_dis, docs/algorithms.md#cvlp-distillation (the official VL-LTR code's
    full-row form of the paper's Eq. 3).

    On the B×B image→text logit matrices Z (student) and Z′ (teacher):
    KD(Z,Z′) = mean_i[-Σ_j softmax(Z′_i)_j log softmax(Z_i)_j], temperature 1, and
    L = ½[KD(Z,Z′) + KD(Zᵀ,Z′ᵀ)]. The teacher is detached (no gradient).
    """
    teacher = teacher_logits.detach()
    kd_i2t = soft_cross_entropy(student_logits, F.softmax(teacher, dim=-1))
    kd_t2i = soft_cross_entropy(student_logits.T, F.softmax(teacher.T, dim=-1))
    return 0.5 * (kd_i2t + kd_t2i)


def feature_distillation_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Feature-level distillation (Table 9 "Feature"), which the official VL-LTR code lacks.

    ASSUMPTION (docs/algorithms.md#cvlp-distillation): mean over the batch of the squared Euclidean
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
    """Stage-1 objective L_pre = (1-β)·L_ccl + β·L_dis (docs/algorithms.md#cvlp-distillation; β is
    Table 9's λ).

    ``image_emb``/``text_emb`` are the student's B×D outputs for paired images and sentences;
    ``labels`` (B,) the image classes. ``distill`` picks L_dis:

    - ``"logits"`` (the official VL-LTR code's default): :func:`distillation_loss` between the
      student's Z and the teacher's Z′ = ``teacher_logit_scale`` · Î′ T′ᵀ (the frozen CLIP teacher's
      own scale, 100).
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


# --------------------------------------------------------------------------------------------
# The long-tail losses (docs/algorithms.md#long-tail-losses). Pure tensor functions first, each following its paper's
# official code by default (the file and line are named in tests/test_lt_losses.py); LIFT's
# parameterisation (github:shijxcs/LIFT utils/losses.py) is the named ``variant="LIFT"`` where the
# two differ. ``counts`` are the training counts per class n_c (a sequence, array or tensor);
# π_c = n_c / Σn. Then the registered factories the ``finetune`` stage builds by name.

LOSS_VARIANTS = ("official", "LIFT")
CB_LOSS_TYPES = ("softmax", "sigmoid", "sigmoid_focal")


def _variant(variant: str) -> None:
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"variant must be one of {LOSS_VARIANTS}, got {variant!r}")


def _counts(counts, like: Tensor) -> Tensor:
    """The counts as a float tensor on ``like``'s device, in at least float32."""
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64) if not torch.is_tensor(counts) else counts)
    return c.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32))


def _prior(counts, like: Tensor) -> Tensor:
    c = _counts(counts, like)
    return c / c.sum()


def log_prior_adjustment(logits: Tensor, counts, tau: float = 1.0, eps: float = 1e-12) -> Tensor:
    """Menon et al.'s adjustment log(π^τ + ε) as one row (official: google-research
    ``logit_adjustment/utils.py`` ``build_loss_fn``; ε = 0 gives LIFT's τ·log π)."""
    pi = _prior(counts, logits)
    return torch.log(pi ** tau + eps) if eps else tau * torch.log(pi)


def logit_adjusted_loss(logits: Tensor, targets: Tensor, counts, tau: float = 1.0, *,
                        variant: str = "official") -> Tensor:
    """Logit-adjusted softmax cross-entropy (Menon et al., ICLR 2021).

    Official: mean CE(z + log(π^τ + 1e-12)). ``variant="LIFT"``: mean CE(z + τ·log π) (LIFT's
    ``LogitAdjustedLoss``). The two differ only by the 1e-12 floor and where τ sits inside it.
    """
    _variant(variant)
    adj = log_prior_adjustment(logits, counts, tau, 1e-12 if variant == "official" else 0.0)
    return F.cross_entropy(logits + adj.to(logits.dtype), targets)


def posthoc_logit_adjustment(logits: Tensor, counts, tau: float = 1.0) -> Tensor:
    """Post-hoc logit adjustment (Menon et al. §4): scores z − log(π^τ + 1e-12), argmax = prediction."""
    return logits - log_prior_adjustment(logits, counts, tau).to(logits.dtype)


#: The τ grid of the post-hoc rule's selection on val (0 keeps the raw logits).
POSTHOC_TAUS = tuple(round(0.25 * i, 2) for i in range(13))  # 0, 0.25, …, 3.0


def select_posthoc_tau(val_logits: Tensor, val_labels: Tensor, counts,
                       taus: tuple[float, ...] = POSTHOC_TAUS) -> tuple[float, float]:
    """The τ of the grid with the best mean per-class accuracy on val, and that accuracy
    (ties: the smallest τ). Per-class accuracy because a long-tailed benchmark's val is balanced."""
    best = (None, -1.0)
    y = np.asarray(torch.as_tensor(val_labels).cpu())
    for tau in taus:
        pred = posthoc_logit_adjustment(torch.as_tensor(val_logits), counts, tau).argmax(1).cpu().numpy()
        acc = float(mean_class_accuracy(pred, y))
        if acc > best[1]:
            best = (float(tau), acc)
    return best


def posthoc_rule(eval_logits, val_logits, val_labels, counts) -> tuple[np.ndarray, dict[str, float]]:
    """The post-hoc logit-adjustment inference rule: τ chosen on val (:func:`select_posthoc_tau`),
    then the evaluation logits adjusted with it. Returns (scores, {"posthoc_tau", "posthoc_val_acc"})."""
    tau, acc = select_posthoc_tau(torch.from_numpy(np.array(val_logits)), torch.from_numpy(np.array(val_labels)),
                                  counts)
    scores = posthoc_logit_adjustment(torch.from_numpy(np.array(eval_logits)), counts, tau).numpy()
    return scores, {"posthoc_tau": tau, "posthoc_val_acc": round(acc, 4)}


def balanced_softmax_loss(logits: Tensor, targets: Tensor, counts) -> Tensor:
    """Balanced softmax (Ren et al., NeurIPS 2020): mean CE(z + log n_c). The official code
    (BalancedMetaSoftmax-Classification ``loss/BalancedSoftmaxLoss.py``) adds log of the counts;
    LIFT adds log π, the same loss (a constant per row cancels in the softmax)."""
    return F.cross_entropy(logits + torch.log(_counts(counts, logits)).to(logits.dtype), targets)


def ldam_margins(counts, max_m: float = 0.5, like: Tensor | None = None) -> Tensor:
    """LDAM's per-class margins m_c ∝ n_c^(−1/4), scaled so that the largest is ``max_m``."""
    c = _counts(counts, like if like is not None else torch.zeros(()))
    m = 1.0 / torch.sqrt(torch.sqrt(c))
    return m * (max_m / m.max())


def ldam_loss(logits: Tensor, targets: Tensor, counts, max_m: float = 0.5, s: float = 30.0,
              weight: Tensor | None = None, *, variant: str = "official") -> Tensor:
    """LDAM (Cao et al., NeurIPS 2019), with optional class weights (DRW passes them).

    Official (kaidic/LDAM-DRW ``losses.py``): the logits are cosines (a normalised linear head);
    CE(s · (z − m_y·1_y), weight). ``variant="LIFT"``: the logits are already scaled (LIFT's cosine
    head, scale 25), so only the margin is scaled: CE(z − s·m_y·1_y), and LIFT passes no weight.
    """
    _variant(variant)
    weight = weight.to(logits.device, logits.dtype) if weight is not None else None
    m = ldam_margins(counts, max_m, logits).to(logits.dtype)
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    if variant == "official":
        return F.cross_entropy(s * (logits - onehot * m[targets, None]), targets, weight=weight)
    return F.cross_entropy(logits - onehot * (s * m[targets, None]), targets, weight=weight)


def focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, weight: Tensor | None = None) -> Tensor:
    """Softmax focal loss as LDAM-DRW and LIFT implement it: mean_i (1 − p_i)^γ · CE_i, where
    CE_i is the (class-weighted) cross-entropy and p_i = exp(−CE_i). Lin et al.'s sigmoid form
    with α is the class-balanced loss's ``loss_type="sigmoid_focal"`` (:func:`class_balanced_loss`)."""
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    weight = weight.to(logits.device, logits.dtype) if weight is not None else None
    ce = F.cross_entropy(logits, targets, reduction="none", weight=weight)
    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()


def class_balanced_weights(counts, beta: float) -> Tensor:
    """Cui et al.'s weights by effective number: w_c = (1−β)/(1−β^n_c), normalised to Σw = C
    (float64 tensor; β = 0 gives all ones, the DRW schedule's first phase)."""
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64) if not torch.is_tensor(counts) else counts,
                        dtype=torch.float64)
    w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), c))
    return w / w.sum() * len(c)


def class_balanced_loss(logits: Tensor, targets: Tensor, counts, beta: float = 0.9999,
                        loss_type: str = "softmax", gamma: float = 0.5, *, variant: str = "official") -> Tensor:
    """Class-balanced loss (Cui et al., CVPR 2019) with the weights of :func:`class_balanced_weights`.

    Official (richardaecn/class-balanced-loss ``src/cifar_main.py`` ``_tower_fn`` and ``focal_loss``,
    TensorFlow), with w_i = w_{y_i}:

    - ``softmax``: mean_i w_i · CE_i (``tf.losses.softmax_cross_entropy`` with per-example weights
      divides by the batch size, not by Σ w_i);
    - ``sigmoid``: Σ_i w_i Σ_c BCE(z_ic, 1[c = y_i]) / B;
    - ``sigmoid_focal``: as sigmoid with each term times exp(−γ·y·z − γ·log(1 + e^(−z))) = (1 − p_t)^γ.

    ``variant="LIFT"`` (softmax only): PyTorch's weighted CE, Σ_i w_i CE_i / Σ_i w_i.
    """
    _variant(variant)
    if loss_type not in CB_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {CB_LOSS_TYPES}, got {loss_type!r}")
    w = class_balanced_weights(counts, beta).to(logits.device, torch.promote_types(logits.dtype, torch.float32))
    if variant == "LIFT":
        if loss_type != "softmax":
            raise ValueError("LIFT's class-balanced loss is the softmax form only; use variant='official'")
        return F.cross_entropy(logits.to(w.dtype), targets, weight=w)
    wi = w[targets]
    if loss_type == "softmax":
        return (wi * F.cross_entropy(logits, targets, reduction="none")).mean()
    onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if loss_type == "sigmoid_focal" and gamma:
        bce = torch.exp(-gamma * onehot * logits - gamma * torch.log1p(torch.exp(-logits))) * bce
    return (wi[:, None] * bce).sum() / onehot.sum()


def grw_weights(counts, exponent: float) -> Tensor:
    """DisAlign's generalised re-weighting: w_c = π_c^(−p), normalised to mean 1 (float64)."""
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64) if not torch.is_tensor(counts) else counts,
                        dtype=torch.float64)
    w = 1.0 / (c / c.sum()) ** exponent
    return w / w.sum() * len(c)


def grw_loss(logits: Tensor, targets: Tensor, counts, exponent: float = 1.2) -> Tensor:
    """CE weighted by :func:`grw_weights` (PyTorch's weighted mean, as DisAlign and LIFT)."""
    w = grw_weights(counts, exponent).to(logits.device, torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.to(w.dtype), targets, weight=w)


def lade_loss(logits: Tensor, targets: Tensor, counts, remine_lambda: float = 0.1,
              estim_loss_weight: float = 0.1, *, variant: str = "official") -> Tensor:
    """LADE (Hong et al., CVPR 2021): the prior-adjusted CE plus w · the regularised estimate.

    L = CE(z + log(π + δ)) + w·L_est, L_est = −Σ_c π_c [F_c − S_c − λ S_c²], where F_c is the mean
    logit z_ic over the batch's images of class c (0 for a class absent from the batch), and
    S_c = logsumexp_i(z_ic − log(π_c + δ) + log(1/C + δ)) − log B. Official (hyperconnect/LADE
    ``loss/PriorCELoss.py`` + ``loss/LADELoss.py``): δ = 1e-9 in both terms. ``variant="LIFT"``: the
    CE term without δ (LIFT's ``LADELoss``), the estimate as the official.
    """
    _variant(variant)
    pi = _prior(counts, logits)
    C, B = logits.shape[1], logits.shape[0]
    ce = F.cross_entropy(logits + torch.log(pi + (1e-9 if variant == "official" else 0.0)).to(logits.dtype), targets)
    member = (targets[None, :] == torch.arange(C, device=logits.device)[:, None]).to(logits.dtype)  # C×B
    n_c = member.sum(1)
    first = (logits.T * member).sum(1) / (n_c + 1e-8)
    spread = (logits - torch.log(pi + 1e-9) + math.log(1.0 / C + 1e-9)).T
    second = torch.logsumexp(spread, dim=1) - math.log(B)
    estim = -((first - second - remine_lambda * second ** 2) * pi).sum()
    return ce + estim_loss_weight * estim


#: The registered losses that balance the classes themselves (a prior term, weights that grow as
#: the count falls): scores trained with them are calibrated to a uniform prior whatever the sampler.
#: LDAM balances only with its deferred re-weighting (``drw``, on by default).
BALANCING_LOSSES = ("logit_adjusted", "balanced_softmax", "lade_loss", "class_balanced", "generalized_reweight")


def loss_prior(loss: str, params: dict | None, sampler: str) -> str:
    """The class distribution (:data:`ltrbench.metrics.SCORE_PRIORS`) that a classifier trained
    with the registered ``loss`` (``params``) on batches of ``sampler`` is calibrated to."""
    if loss in BALANCING_LOSSES or (loss == "ldam" and (params or {}).get("drw", True)):
        return "uniform"
    if sampler not in SAMPLER_PRIOR:
        raise ConfigError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLER_PRIOR)}.")
    return SAMPLER_PRIOR[sampler]


# -- the registered factories: make(train_counts, **params) -> loss(logits, targets) ---------


class EpochAwareLoss:
    """A loss whose behaviour changes with the epoch (LDAM-DRW's deferred re-weighting). The one
    training loop tells the task the epoch (``TrainTask.set_epoch``); :class:`ClassifierTask`
    passes it here as ``set_epoch(epoch, epochs)`` (0-based epoch, total epochs)."""

    def __init__(self, fn: Callable[[Tensor, Tensor, int, int], Tensor]) -> None:
        self.fn, self.epoch, self.epochs = fn, 0, 1

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch, self.epochs = int(epoch), int(epochs)

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.fn(logits, targets, self.epoch, self.epochs)


def drw_start(epochs: int, drw_epoch: float) -> int:
    """The first 0-based epoch with the deferred weights: ``drw_epoch`` < 1 is a fraction of the
    training (the official 160 of 200 is 0.8), ≥ 1 an epoch number."""
    return int(drw_epoch) if drw_epoch >= 1 else int(math.floor(drw_epoch * epochs))


@LOSSES.register("logit_adjusted")
def _make_la(train_counts, tau: float = 1.0, variant: str = "official"):
    """Logit-adjusted loss (``tau``, ``variant``)."""
    _variant(variant)
    return lambda z, y: logit_adjusted_loss(z, y, train_counts, tau, variant=variant)


@LOSSES.register("balanced_softmax")
def _make_bs(train_counts):
    """Balanced softmax."""
    return lambda z, y: balanced_softmax_loss(z, y, train_counts)


@LOSSES.register("ldam")
def _make_ldam(train_counts, max_m: float = 0.5, s: float = 30.0, drw: bool = True, drw_epoch: float = 0.8,
               beta: float = 0.9999, variant: str = "official"):
    """LDAM, with the deferred re-weighting schedule by default (``drw``: from ``drw_epoch`` on, CE
    weighted by the effective-number weights of ``beta``; before it, unweighted). LIFT's is
    ``variant=LIFT, drw=false``."""
    _variant(variant)
    weights = class_balanced_weights(train_counts, beta).float()

    def fn(z, y, epoch, epochs):
        w = weights.to(z.device) if drw and epoch >= drw_start(epochs, drw_epoch) else None
        return ldam_loss(z, y, train_counts, max_m, s, w, variant=variant)

    return EpochAwareLoss(fn)


@LOSSES.register("class_balanced")
def _make_cb(train_counts, beta: float = 0.9999, loss_type: str = "softmax", gamma: float = 0.5,
             variant: str = "official"):
    """Class-balanced loss (``beta``, ``loss_type`` softmax/sigmoid/sigmoid_focal, ``gamma``, ``variant``)."""
    _variant(variant)
    return lambda z, y: class_balanced_loss(z, y, train_counts, beta, loss_type, gamma, variant=variant)


@LOSSES.register("softmax_focal")
def _make_focal(train_counts, gamma: float = 2.0):
    """Softmax focal loss (``gamma``)."""
    return lambda z, y: focal_loss(z, y, gamma)


@LOSSES.register("generalized_reweight")
def _make_grw(train_counts, exponent: float = 1.2):
    """Generalised re-weighting (``exponent``; DisAlign's 1.2 on ImageNet-LT, LIFT's 1.0)."""
    return lambda z, y: grw_loss(z, y, train_counts, exponent)


@LOSSES.register("lade_loss")
def _make_lade(train_counts, remine_lambda: float = 0.1, estim_loss_weight: float = 0.1, variant: str = "official"):
    """LADE (``remine_lambda``, ``estim_loss_weight``: 0.1, 0.1 on ImageNet-LT/Places-LT, 0.5, 0.05 on iNat)."""
    _variant(variant)
    return lambda z, y: lade_loss(z, y, train_counts, remine_lambda, estim_loss_weight, variant=variant)
