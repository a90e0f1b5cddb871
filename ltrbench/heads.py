"""Classifier heads and the head-side math of every method, on features already extracted.

This module owns: the decoupling heads (docs/algorithms.md#decoupling: NCM, τ-normalisation and
its τ sweep, cRT, LWS), the KNN head (docs/algorithms.md#knn-head), AnSS scoring and anchor
selection (docs/algorithms.md#anss), and the LGR head (docs/algorithms.md#lgr) with its test-time
fusion rules. Pure tensor code: no I/O, no training loops, no samplers; those live elsewhere.
Where the paper and the official code (VL-LTR's, or the decoupling code) differ, the default
follows the code.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .metrics import mean_class_accuracy

NCM_FEAT_TYPES = ("cl2n", "un", "l2n")
NCM_DIST_TYPES = ("l2", "cos")
DEFAULT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))  # the decoupling code's sweep: 0, 0.1, …, 2.0
FUSION_RULES = ("paper", "alpha", "logit_sum")
ANCHOR_MODES = ("anss", "cutoff", "random")

_EPS = 1e-12  # the norm floor F.normalize uses


def _as_float(t: Tensor) -> Tensor:
    """Half/bfloat16/int features to float32; float32/float64 pass through."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


# --------------------------------------------------------------------------------------------
# NCM (docs/algorithms.md#ncm)


def _ncm_transform(feats: Tensor, mean: Tensor, feat_type: str) -> Tensor:
    """The decoupling code's feature transforms: ``un`` raw, ``l2n`` f/‖f‖, ``cl2n`` (f−μ)/‖f−μ‖."""
    if feat_type == "un":
        return feats
    if feat_type == "cl2n":
        feats = feats - mean
    return F.normalize(feats, dim=1)


def ncm_logits(
    train_feats: Tensor,
    train_labels: Tensor,
    feats: Tensor,
    *,
    num_classes: int | None = None,
    feat_type: str = "cl2n",
    dist_type: str = "l2",
) -> Tensor:
    """Nearest-class-mean logits (N×C), docs/algorithms.md#ncm (the decoupling code's defaults cl2n +
    l2).

    μ is the instance-weighted mean of all training features; train and query features get
    the same transform; centroid c_k is the class mean of the transformed training features
    and is NOT re-normalised. ``l2``: logit_k = −‖f̃ − c_k‖²; ``cos``: f̃·c_k / D.
    ``num_classes`` defaults to max(train_labels) + 1. A class with no training feature has
    no centroid: its logit is −inf for every query (it can never be predicted).
    """
    _check_choice("feat_type", feat_type, NCM_FEAT_TYPES)
    _check_choice("dist_type", dist_type, NCM_DIST_TYPES)
    train = _as_float(train_feats)
    labels = train_labels.to(train.device).long()
    query = _as_float(feats).to(device=train.device, dtype=train.dtype)
    mean = train.mean(dim=0)
    train_t = _ncm_transform(train, mean, feat_type)
    query_t = _ncm_transform(query, mean, feat_type)

    n_cls = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(labels, minlength=n_cls)
    sums = torch.zeros(n_cls, train.shape[1], dtype=train.dtype, device=train.device)
    centroids = sums.index_add_(0, labels, train_t) / counts.clamp_min(1)[:, None]

    if dist_type == "l2":  # −‖f̃ − c‖² = −(‖f̃‖² − 2 f̃·c + ‖c‖²)
        logits = 2 * query_t @ centroids.T - query_t.pow(2).sum(1, keepdim=True) - centroids.pow(2).sum(1)
    else:
        logits = query_t @ centroids.T / train.shape[1]
    return logits.masked_fill(counts == 0, float("-inf"))


# --------------------------------------------------------------------------------------------
# τ-normalised classifier (docs/algorithms.md#tau-normalisation)


def tau_normalize(weight: Tensor, tau: float) -> Tensor:
    """W̃_k = W_k / ‖W_k‖^τ, row-wise (docs/algorithms.md#tau-normalisation); the caller drops
    the bias.

    τ = 0 returns W unchanged. A zero row stays zero (its norm is floored at 1e-12).
    """
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(_EPS).pow(tau)


@torch.no_grad()
def select_tau(
    weight: Tensor,
    val_feats: Tensor,
    val_labels: Tensor,
    taus: Sequence[float] | None = None,
) -> tuple[float, dict[float, float]]:
    """Sweep τ (default 0, 0.1, …, 2.0) and pick the best on validation
    (docs/algorithms.md#tau-normalisation).

    logits = feats @ tau_normalize(W, τ)ᵀ on raw features, no bias. Accuracy is the mean of
    per-class accuracies over the classes present in ``val_labels``, as in the decoupling code's script. Ties
    go
    to the smallest τ. Returns (best τ, {τ: accuracy}).
    """
    taus = DEFAULT_TAUS if taus is None else tuple(float(t) for t in taus)
    w = _as_float(weight)
    feats = _as_float(val_feats).to(device=w.device, dtype=w.dtype)
    labels = val_labels.to(w.device).long()
    y = labels.cpu().numpy()
    # metrics.mean_class_accuracy is in percent; the sweep reports fractions, as the decoupling
    # code's script does.
    accs = {tau: mean_class_accuracy((feats @ tau_normalize(w, tau).T).argmax(1).cpu().numpy(), y) / 100.0
            for tau in taus}
    best = min(accs, key=lambda tau: (-accs[tau], tau))
    return best, accs


# --------------------------------------------------------------------------------------------
# KNN head (docs/algorithms.md#knn-head)


def _majority_vote(ranked_labels: Tensor) -> Tensor:
    """Row-wise majority over the labels of the k neighbours, most similar first.

    votes[n, r] counts the neighbours that share rank r's class; argmax returns the first
    maximal rank, so a tie goes to the tied class that appears first in similarity order.
    """
    votes = (ranked_labels[:, :, None] == ranked_labels[:, None, :]).sum(dim=-1)
    return ranked_labels.gather(1, votes.argmax(dim=1, keepdim=True)).squeeze(1)


@torch.no_grad()
def knn_predict(
    bank_feats: Tensor,
    bank_labels: Tensor,
    feats: Tensor,
    k: int = 5,
    *,
    max_chunk_elems: int = 2**25,
) -> Tensor:
    """k-nearest-neighbour majority vote by cosine similarity (docs/algorithms.md#knn-head: the
    official ``knn_5``).

    Every query is compared with every bank row (e.g. every sentence of every class); the
    top-k vote, a tie going to the tied class ranked highest. Queries are processed in chunks
    of at most ``max_chunk_elems`` similarities. k is capped at the bank size; equal
    similarities are ordered as ``torch.topk`` leaves them. Runs on the bank's device and
    returns labels there.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    bank = F.normalize(_as_float(bank_feats), dim=1)
    labels = bank_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    step = max(1, max_chunk_elems // max(1, bank.shape[0]))
    preds = [torch.empty(0, dtype=torch.long, device=bank.device)]
    for start in range(0, feats.shape[0], step):
        query = F.normalize(_as_float(feats[start : start + step]).to(bank.device, bank.dtype), dim=1)
        ranked = (query @ bank.T).topk(k, dim=1).indices  # sorted, most similar first
        preds.append(_majority_vote(labels[ranked]))
    return torch.cat(preds)


# --------------------------------------------------------------------------------------------
# cRT and LWS (docs/algorithms.md#crt, docs/algorithms.md#lws)


class CRTHead(nn.Linear):
    """cRT classifier (docs/algorithms.md#crt): a new Linear(D→C) with bias and PyTorch default init."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes, bias=True)


class LWSHead(nn.Module):
    """Learnable weight scaling (docs/algorithms.md#lws): logit_k = s_k·(W_k·x + b_k).

    W and b are the stage-1 classifier, frozen as buffers; only ``scales`` (init 1) learns.
    The bias is scaled too. ``bias=None`` means a zero bias.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        weight = weight.detach().clone()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", torch.zeros_like(weight[:, 0]) if bias is None else bias.detach().clone())
        self.scales = nn.Parameter(torch.ones_like(weight[:, 0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.scales * F.linear(x, self.weight, self.bias)


# --------------------------------------------------------------------------------------------
# LGR head (docs/algorithms.md#lgr)


def fuse_logits(z_img: Tensor, z_txt: Tensor, rule: str, alpha: float = 0.2) -> Tensor:
    """Test-time scores of the two LGR branches, to arg-max (docs/algorithms.md#lgr-inference).

    ``paper``: softmax(z^I) + softmax(z^T) (the paper's Eq. 7). ``alpha``: α·softmax(z^I) +
    (1−α)·softmax(z^T), the official VL-LTR code's overall top-1 (α = 0.2; 0.7 on iNat).
    ``logit_sum``: z^I + z^T, the official code's rule for the many/medium/few splits. Computed in
    float32.
    """
    _check_choice("rule", rule, FUSION_RULES)
    z_img, z_txt = z_img.float(), z_txt.float()
    if rule == "logit_sum":
        return z_img + z_txt
    p_img, p_txt = z_img.softmax(dim=-1), z_txt.softmax(dim=-1)
    if rule == "paper":
        return p_img + p_txt
    return alpha * p_img + (1.0 - alpha) * p_txt


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=device.type, enabled=False)


class LGRHead(nn.Module):
    """Language-guided recognition head, docs/algorithms.md#lgr exactly.

    Inputs x are raw (un-normalised) image embeddings, B×D. Per class c the frozen anchors
    A_c (M×D, raw CVLP text embeddings; ``anchor_mask`` True = real sentence) are attended:
    q = W_q·LN_q(x), k_cm = W_k·LN_k(A_cm), a_c = softmax_m(q·k_cm/√D) (padded m → −inf),
    G_c = Σ_m a_cm A_cm (values are the raw anchors; no value/output projection). Branches:
    z^T_c = s·cos(x, G_c) with s = ``logit_scale`` (the multiplier, frozen) and
    z^I = ``visual_fc``(x) = Linear(hidden→C)(ReLU(Linear(D→hidden)(x))), hidden = 4D default.

    Parameter names matter to the optimiser: only ``visual_fc.*`` contains "visual" (main lr);
    ``ln_q``, ``ln_k``, ``q_proj``, ``k_proj`` get ``text_lr``. Anchors, mask and s are buffers.

    Implementation notes:
    - G (B×C×D) is never built: x̂·G_c = Σ_m a_cm (x̂·A_cm) and ‖G_c‖² = a_cᵀ (A_c A_cᵀ) a_c,
      with the per-class Gram matrix A_c A_cᵀ cached. Memory is O(B·C·M), and classes are processed
      in chunks of at most ``max_chunk_elems`` attention weights. This combination step runs in
      float32 even under autocast.
    - In eval mode under no_grad the keys W_k·LN_k(A) are computed once (float32, no autocast)
      and cached; the cache is keyed on the tensors' identity and version counters, so an
      optimiser step, ``load_state_dict`` or ``.to()`` invalidates it, and ``.train()`` clears it.
    - ``v_detach`` (the official VL-LTR code's iNat models): G is divided by a stop-gradient copy of
      its norm; the forward value is unchanged.
    - Every class needs at least one real anchor (a class with none would have no G_c).
    """

    def __init__(
        self,
        anchors: Tensor,
        anchor_mask: Tensor,
        logit_scale: float | Tensor,
        hidden: int | None = None,
        v_detach: bool = False,
        *,
        max_chunk_elems: int = 2**24,
    ) -> None:
        super().__init__()
        if anchors.dim() != 3:
            raise ValueError(f"anchors must be C×M×D, got shape {tuple(anchors.shape)}")
        n_cls, n_anchor, dim = anchors.shape
        if tuple(anchor_mask.shape) != (n_cls, n_anchor):
            raise ValueError(f"anchor_mask must be {n_cls}×{n_anchor}, got {tuple(anchor_mask.shape)}")
        mask = anchor_mask.detach().to(torch.bool).clone()
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{len(empty)} classes have no real anchor sentence, e.g. {empty[:10]}")
        self.register_buffer("anchors", anchors.detach().float().clone())
        self.register_buffer("anchor_mask", mask)
        self.register_buffer("logit_scale", torch.as_tensor(logit_scale, dtype=torch.float32).detach().clone())
        self.v_detach = v_detach
        self.max_chunk_elems = max_chunk_elems
        hidden = 4 * dim if hidden is None else hidden

        self.ln_q = nn.LayerNorm(dim, eps=1e-5)
        self.ln_k = nn.LayerNorm(dim, eps=1e-5)
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.visual_fc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, n_cls))
        self.reset_parameters()
        self._cache: dict[str, tuple[tuple, Tensor]] = {}

    fuse_logits = staticmethod(fuse_logits)

    def reset_parameters(self) -> None:
        """W_q, W_k = identity; LayerNorms γ = 1, β = 0; MLP trunc-normal std 0.02, zero bias."""
        self.ln_q.reset_parameters()
        self.ln_k.reset_parameters()
        nn.init.eye_(self.q_proj.weight)
        nn.init.eye_(self.k_proj.weight)
        for layer in (self.visual_fc[0], self.visual_fc[2]):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def train(self, mode: bool = True) -> LGRHead:
        self._cache.pop("keys", None)
        return super().train(mode)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return (z_img, z_txt), both B×C, for raw image embeddings x (B×D)."""
        q = self.q_proj(self.ln_q(x))
        keys, gram = self._keys(), self._gram()
        with _no_autocast(x.device):
            x_unit = F.normalize(x.float(), dim=-1)
        chunks = self._class_chunks(x.shape[0])
        z_txt = torch.cat([self._text_logits(q, x_unit, keys, gram, classes) for classes in chunks], dim=1)
        return self.visual_fc(x), z_txt

    def _text_logits(self, q: Tensor, x_unit: Tensor, keys: Tensor, gram: Tensor, classes: slice) -> Tensor:
        """z^T for one chunk of classes: s·cos(x, G_c) without materialising G."""
        anchors, mask = self.anchors[classes], self.anchor_mask[classes]
        keys, gram = keys[classes], gram[classes]
        n_cls, n_anchor, dim = anchors.shape
        # a_cm = softmax_m(q·k_cm / √D), docs/algorithms.md#lgr-attention
        scores = (q @ keys.reshape(n_cls * n_anchor, dim).T).view(-1, n_cls, n_anchor) / math.sqrt(dim)
        attn = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)  # padded anchors: exactly 0
        with _no_autocast(q.device):
            attn = attn.float()
            x_dot_a = (x_unit @ anchors.reshape(n_cls * n_anchor, dim).T).view(-1, n_cls, n_anchor)
            dot = (attn * x_dot_a).sum(dim=-1)  # x̂·G_c
            sq_norm = (torch.einsum("bcm,cmn->bcn", attn, gram) * attn).sum(dim=-1)  # ‖G_c‖²
            g_norm = sq_norm.clamp_min(_EPS**2).sqrt()
            if self.v_detach:
                g_norm = g_norm.detach()
            return self.logit_scale * dot / g_norm

    def _class_chunks(self, batch: int) -> Iterator[slice]:
        n_cls, n_anchor, _ = self.anchors.shape
        step = max(1, self.max_chunk_elems // max(1, batch * n_anchor))
        return (slice(start, min(start + step, n_cls)) for start in range(0, n_cls, step))

    def _compute_keys(self) -> Tensor:
        return self.k_proj(self.ln_k(self.anchors))

    def _keys(self) -> Tensor:
        """W_k·LN_k(A), C×M×D: cached in eval mode under no_grad, recomputed otherwise."""
        if self.training or torch.is_grad_enabled():
            return self._compute_keys()
        deps = (self.anchors, self.ln_k.weight, self.ln_k.bias, self.k_proj.weight)
        return self._cached("keys", deps, self._compute_keys)

    def _gram(self) -> Tensor:
        """Per-class Gram matrices A_c A_cᵀ, C×M×M (anchors are frozen: always cached)."""
        return self._cached("gram", (self.anchors,), lambda: self.anchors @ self.anchors.transpose(1, 2))

    def _cached(self, name: str, deps: Sequence[Tensor], compute: Callable[[], Tensor]) -> Tensor:
        """Reuse ``self._cache[name]`` while every dependency is the same, unmodified tensor."""
        key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in deps)
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        # A plain (non-inference) tensor without history, in float32: safe to reuse in any mode.
        with torch.inference_mode(False), torch.no_grad(), _no_autocast(self.anchors.device):
            value = compute()
        self._cache[name] = (key, value)
        return value


# --------------------------------------------------------------------------------------------
# AnSS: sentence scores and anchor selection (docs/algorithms.md#anss)


@torch.no_grad()
def anss_scores(
    text_emb: Tensor,
    text_labels: Tensor,
    image_emb: Tensor,
    image_labels: Tensor,
    logit_scale: float | Tensor,
    *,
    max_chunk_elems: int = 2**25,
) -> Tensor:
    """L_lin per sentence, docs/algorithms.md#anss-score: lower = more visually grounded.

    For sentence t of class c: z_j = s·cos(e_t, e_j) over every image j; q_j = 1[y_j = c] /
    #{j: y_j = c}; L_lin(t) = −Σ_j q_j log softmax(z)_j. No smoothing. A sentence whose class
    has no image gets NaN (0/0), which :func:`select_anchors` treats as "use corpus order".
    Sentences are processed in chunks of at most ``max_chunk_elems`` logits; no gradients.
    """
    images = F.normalize(_as_float(image_emb), dim=1)
    img_labels = image_labels.to(images.device).long()
    texts = _as_float(text_emb).to(images.device, images.dtype)
    txt_labels = text_labels.to(images.device).long()
    step = max(1, max_chunk_elems // max(1, images.shape[0]))
    scores = [torch.empty(0, dtype=images.dtype, device=images.device)]
    for start in range(0, texts.shape[0], step):
        log_p = F.log_softmax(logit_scale * F.normalize(texts[start : start + step], dim=1) @ images.T, dim=1)
        same = (txt_labels[start : start + step, None] == img_labels[None, :]).to(log_p.dtype)
        q = same / same.sum(dim=1, keepdim=True)  # 0/0 = NaN for a class without images
        scores.append(-(q * log_p).sum(dim=1))
    return torch.cat(scores)


def _pick_sentences(
    mode: str, n: int, m: int, scores: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    if mode == "random":
        return torch.randperm(n, generator=generator)[:m].sort().values
    if mode == "anss" and not torch.isnan(scores).any():
        return torch.argsort(scores.cpu(), stable=True)[:m]
    return torch.arange(min(n, m))  # "cutoff", or AnSS fallback: corpus order


def select_anchors(
    scores_per_class: Sequence[Tensor] | None,
    embeddings_per_class: Sequence[Tensor],
    M: int = 64,
    mode: str = "anss",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Pick M anchor sentences per class, docs/algorithms.md#anchor-selection (AnSS and Cut Off).

    ``embeddings_per_class[c]`` is n_c×D (raw text embeddings, corpus order);
    ``scores_per_class[c]`` the n_c AnSS scores (needed for ``anss`` only, else may be None).
    Modes: ``anss`` keeps the M lowest scores in ascending order (stable sort: equal scores
    keep corpus order); a class with any NaN score (no image to score against) falls back to
    corpus order. ``cutoff`` keeps the first M in corpus order (the first 64 prompts). ``random``
    draws M without replacement with ``generator`` (seed it for reproducibility), in corpus
    order. A class with fewer than M sentences is zero-padded and its padded slots masked.
    Returns (anchors C×M×D in the embeddings' dtype, mask C×M with True = real sentence,
    chosen indices per class as LongTensors).
    """
    _check_choice("mode", mode, ANCHOR_MODES)
    if mode == "anss" and scores_per_class is None:
        raise ValueError("mode 'anss' needs scores_per_class")
    if scores_per_class is not None and len(scores_per_class) != len(embeddings_per_class):
        raise ValueError(f"{len(scores_per_class)} score lists for {len(embeddings_per_class)} classes")
    first = embeddings_per_class[0]
    anchors = first.new_zeros(len(embeddings_per_class), M, first.shape[-1])
    mask = torch.zeros(len(embeddings_per_class), M, dtype=torch.bool, device=first.device)
    chosen = []
    for c, emb in enumerate(embeddings_per_class):
        scores = scores_per_class[c] if mode == "anss" else None
        if scores is not None and scores.shape[0] != emb.shape[0]:
            raise ValueError(f"class {c}: {scores.shape[0]} scores for {emb.shape[0]} sentences")
        idx = _pick_sentences(mode, emb.shape[0], M, scores, generator)
        anchors[c, : len(idx)] = emb[idx.to(emb.device)]
        mask[c, : len(idx)] = True
        chosen.append(idx)
    return anchors, mask, chosen


# --------------------------------------------------------------------------------------------
# LIFT's cosine classifier (docs/algorithms.md#lift)


def cosine_logits(features: Tensor, weight: Tensor, scale: float) -> Tensor:
    """scale · ⟨x/‖x‖, w_c/‖w_c‖⟩ for each row x of ``features`` (N×D) and class row w_c of
    ``weight`` (C×D), no bias (LIFT ``models/classifiers.py`` ``CosineClassifier``)."""
    return F.linear(F.normalize(features, dim=-1), F.normalize(weight, dim=-1)) * scale


class CosineHead(nn.Module):
    """A cosine classifier with a fixed scale (LIFT: 25), weight C×D."""

    def __init__(self, dim: int, num_classes: int, scale: float = 25.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.kaiming_normal_(self.weight)
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return cosine_logits(x, self.weight.to(x.dtype), self.scale)
