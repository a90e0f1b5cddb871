"""Accuracy metrics, defined once: overall top-1, many/medium/few under two conventions, per class.

Shot conventions (docs/algorithms.md#shot-conventions), named in every output:

* ``paper``: the VL-LTR paper and code: many if n_c ≥ 100, few if n_c ≤ 20, else medium.
* ``decoupling``: Kang et al.'s code: many if n_c > 100, few if n_c < 20, else medium.

A bucket's accuracy is the mean of its classes' per-class accuracies (on the balanced evaluation
splits of these benchmarks this equals the pooled accuracy over its samples). A bucket with no
class, or whose classes have no evaluation image, is reported as ``None`` (empty), never as 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .vocab import CONVENTION_NOTE, CONVENTIONS, METRIC_NAMES  # defined there, shared with the CLI

BUCKETS = ("many", "medium", "few")


def shot_buckets(train_counts: np.ndarray, convention: str = "paper") -> np.ndarray:
    """Per-class bucket names ('many' | 'medium' | 'few') from training image counts."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown shot convention {convention!r}; use one of {sorted(CONVENTIONS)}")
    many_t, few_t, inclusive = CONVENTIONS[convention]
    n = np.asarray(train_counts)
    if inclusive:
        many, few = n >= many_t, n <= few_t
    else:
        many, few = n > many_t, n < few_t
    out = np.full(n.shape, "medium", dtype=object)
    out[many] = "many"
    out[few] = "few"
    return out


def bucket_counts(train_counts: np.ndarray, convention: str = "paper") -> dict[str, int]:
    b = shot_buckets(train_counts, convention)
    return {k: int((b == k).sum()) for k in BUCKETS}


def per_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class in percent; NaN for a class with no evaluation image."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    total = np.bincount(labels, minlength=num_classes).astype(float)
    correct = np.bincount(labels[preds == labels], minlength=num_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * correct / np.maximum(total, 1), np.nan)


def summarize(
    preds: np.ndarray, labels: np.ndarray, train_counts: np.ndarray, *, scores: np.ndarray | None = None,
    bucket_preds: np.ndarray | None = None, score_kind: str = "logits",
) -> dict[str, object]:
    """Everything a result records: both conventions' row of :data:`METRIC_NAMES` (overall,
    many/medium/few, the class-accuracy means, macro-F1, and, given ``scores``, NLL and ECE; an
    undefined one is None) and per-class accuracy. ``bucket_preds``: the predictions many/medium/few
    come from, when not ``preds`` (:class:`Predictions`); ``score_kind``: what ``scores`` are
    (:data:`SCORE_KINDS`)."""
    train_counts = np.asarray(train_counts)
    labels = np.asarray(labels, np.int64)
    if scores is not None:
        p = Predictions.from_scores(scores, labels, train_counts, kind=score_kind)
        p = Predictions(p.labels, p.pred, p.train_counts, None if bucket_preds is None else np.asarray(bucket_preds),
                        p.log_p_true, p.confidence)
    else:
        p = Predictions(labels, np.asarray(preds, np.int64), train_counts,
                        None if bucket_preds is None else np.asarray(bucket_preds, np.int64))
    pca = per_class_accuracy(p.pred, labels, len(train_counts))
    return {
        "metrics": p.point(),
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in pca],
    }


def top1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Micro top-1 accuracy in percent (every evaluation image counts once); the decoupling
    code's model selection."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(100.0 * np.mean(preds == labels)) if len(labels) else float("nan")


def mean_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean of per-class accuracies (%) over the classes that have evaluation images (the
    decoupling code's τ sweep)."""
    labels = np.asarray(labels)
    n = int(labels.max()) + 1 if num_classes is None and len(labels) else (num_classes or 0)
    pca = per_class_accuracy(preds, labels, n)
    return float(np.nanmean(pca)) if np.isfinite(pca).any() else float("nan")


# --------------------------------------------------------------------------- the metrics long-tail papers report

#: Every metric of a record's ``metrics[<convention>]`` row, as ``--metric`` names it. The first four
#: are accuracies (%); ``mean_class``, ``harmonic``, ``geometric``, ``worst`` are the mean, harmonic
#: mean, geometric mean and minimum of the per-class accuracies (%; a class at 0 % makes the harmonic
#: and geometric means 0); ``macro_f1`` (%) is the unweighted mean F1 over the classes that have
#: evaluation images or are predicted (scikit-learn's ``f1_score(average="macro")``); ``nll`` (nats)
#: is the mean negative log-likelihood of the true class, probabilities clipped at 1e-15; ``ece``
#: (%) the expected calibration error of the arg-max confidence in 15 equal-width bins (b-th bin:
#: (b/15, (b+1)/15], confidence 0 in the first), and ``ece_many`` etc. the same over the evaluation
#: images of that bucket's classes. Both read the scores as the method declares them
#: (:data:`SCORE_KINDS`): logits by log softmax, VL-LTR's fused probabilities as probabilities; a
#: method whose scores are neither (zero-shot cosine similarities without CLIP's logit scale, a vote
#: count, NCM's negative distances) is read as logits, as it stands, badly calibrated by construction.
#: (:data:`METRIC_NAMES` itself lives in :mod:`ltrbench.vocab`.)
#: The metrics that depend on the shot convention (the others are the same under both).
BUCKET_METRICS = ("many", "medium", "few", "ece_many", "ece_medium", "ece_few")
#: Metrics where lower is better.
LOWER_IS_BETTER = ("nll", "ece", "ece_many", "ece_medium", "ece_few")
ECE_BINS = 15
_NLL_EPS = 1e-15


#: What a method's scores are (:class:`ltrbench.stage_kinds.Prediction`'s ``score_kind``), which
#: decides how ``nll``, ``ece`` and the oracle prior correction read them: ``logits`` (trained as
#: log-probabilities up to a constant: log softmax), ``probabilities`` (non-negative, read as p / Σp:
#: VL-LTR's fused branches), ``scores`` (similarities, negative distances or votes, never trained as
#: log-probabilities: ``nll`` and ``ece`` read them as logits, as they stand, and there is no oracle).
SCORE_KINDS = ("logits", "probabilities", "scores")


#: The class distribution a method's scores are calibrated to (``EvaluateConfig.score_prior``,
#: from :meth:`ltrbench.planner.Method.score_prior`): what its training saw after sampling and loss
#: balancing. ``train``: the training frequencies π (plain CE on instance sampling); ``sqrt``: ∝ √n
#: (the square-root sampler); ``uniform``: 1/C (class-aware sampling, or a loss that balances:
#: logit adjustment, balanced softmax, LADE, class-balanced and GRW weights, LDAM's deferred
#: re-weighting). The oracle prior correction moves scores from this prior to the test prior q.
SCORE_PRIORS = ("train", "sqrt", "uniform")
#: The prior a training sampler gives scores trained with plain cross-entropy.
SAMPLER_PRIOR = {"instance": "train", "sqrt": "sqrt", "class_aware": "uniform"}


def score_prior(train_counts: np.ndarray, name: str) -> np.ndarray:
    """The class distribution ``name`` (:data:`SCORE_PRIORS`) over classes with ``train_counts``."""
    if name not in SCORE_PRIORS:
        raise ValueError(f"score prior must be one of {', '.join(SCORE_PRIORS)}, got {name!r}")
    c = np.maximum(np.asarray(train_counts, float), 1.0)
    w = {"train": c, "sqrt": np.sqrt(c), "uniform": np.ones_like(c)}[name]
    return w / w.sum()


def _check_kind(kind: str) -> None:
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind must be one of {', '.join(SCORE_KINDS)}, got {kind!r}")


def log_probabilities(scores: np.ndarray, kind: str = "logits") -> np.ndarray:
    """Row-wise log-probabilities (float64) of a block of scores of ``kind`` (:data:`SCORE_KINDS`):
    log softmax(s) for logits and scores, log(p / Σp) for probabilities (a masked class, −inf or
    p = 0, gets −inf)."""
    _check_kind(kind)
    c = np.asarray(scores, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if kind == "probabilities":
            return np.log(np.maximum(c, 0.0)) - np.log(np.maximum(c, 0.0).sum(1, keepdims=True))
        top = c.max(1, keepdims=True)
        return c - (top + np.log(np.exp(c - top).sum(1, keepdims=True)))


def probabilities(scores: np.ndarray, labels: np.ndarray,
                  kind: str = "logits") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arg-max predictions, the log-probability of the true class and the arg-max confidence, per
    image, with the scores read as ``kind`` (:func:`log_probabilities`)."""
    s = np.asarray(scores)
    labels = np.asarray(labels, dtype=np.int64)
    _check_kind(kind)
    if not len(labels):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    step = max(1, 2_000_000 // max(s.shape[1], 1))  # rows at a time: no N × C float64 copy
    pred, log_p_true, confidence = (np.empty(len(labels), t) for t in (np.int64, float, float))
    for i in range(0, len(labels), step):
        c = np.asarray(s[i:i + step])
        lp = log_probabilities(c, kind)
        pred[i:i + step] = c.argmax(1)
        log_p_true[i:i + step] = lp[np.arange(len(c)), labels[i:i + step]]
        confidence[i:i + step] = np.exp(lp.max(1))
    return pred, np.maximum(log_p_true, np.log(_NLL_EPS)), confidence


def ece_bin(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Each confidence's bin of ``bins`` equal-width bins (lo, hi] of [0, 1] (0 goes to the first)."""
    return np.clip(np.ceil(np.asarray(confidence, float) * bins).astype(np.int64) - 1, 0, bins - 1)


@dataclass(frozen=True)
class Predictions:
    """What one run predicted on its evaluation images, in evaluation order: enough to compute every
    metric of :data:`METRIC_NAMES` and to bootstrap it (:mod:`ltrbench.stats`).

    ``bucket_pred`` (optional) are the predictions whose per-class accuracy gives many/medium/few
    when a method reports those from another inference rule (VL-LTR's ``bucket_rule``); otherwise
    ``pred``'s. ``log_p_true`` and ``confidence`` (optional: a record written before they were
    stored has neither, and then ``nll`` and ``ece`` are NaN) come from :func:`probabilities`.

    Every metric is a function of sums over images (:meth:`design`: one sparse column per sum), so
    a bootstrap replicate, a vector of per-image resampling weights, gives every metric from one
    matrix product (:meth:`values`); the point estimate is the replicate whose weights are all 1.
    """

    labels: np.ndarray
    pred: np.ndarray
    train_counts: np.ndarray
    bucket_pred: np.ndarray | None = None
    log_p_true: np.ndarray | None = None
    confidence: np.ndarray | None = None

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
                    bucket_scores: np.ndarray | None = None, kind: str = "logits") -> "Predictions":
        pred, lp, conf = probabilities(scores, labels, kind)
        bucket = None if bucket_scores is None else np.asarray(bucket_scores).argmax(1)
        return cls(np.asarray(labels, np.int64), pred, np.asarray(train_counts), bucket, lp, conf)

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> "Predictions | None":
        """The predictions a result record stores (``predictions``), or None for a record written
        before ltrbench stored them."""
        p = rec.get("predictions")
        if not p:
            return None
        arr = lambda k, t: None if p.get(k) is None else np.asarray(p[k], t)  # noqa: E731
        return cls(arr("labels", np.int64), arr("pred", np.int64), np.asarray(rec["train_counts"]),
                   arr("bucket_pred", np.int64), arr("log_p_true", float), arr("confidence", float))

    def to_json(self) -> dict[str, Any]:
        """The ``predictions`` of a result record (floats to 6 significant digits)."""
        out: dict[str, Any] = {"labels": self.labels.tolist(), "pred": self.pred.tolist()}
        if self.bucket_pred is not None:
            out["bucket_pred"] = self.bucket_pred.tolist()
        for k in ("log_p_true", "confidence"):
            v = getattr(self, k)
            if v is not None:
                out[k] = [float(f"{x:.6g}") for x in v.tolist()]
        return out

    @property
    def num_classes(self) -> int:
        return len(self.train_counts)

    def _groups(self) -> list[np.ndarray]:
        """Per image: the index in :data:`BUCKETS` of its class's bucket under each convention."""
        out = []
        for conv in CONVENTIONS:
            per_class = np.array([BUCKETS.index(b) for b in shot_buckets(self.train_counts, conv)], np.int64)
            out.append(per_class[self.labels])
        return out

    def design(self):
        """The sparse N × F matrix whose weighted column sums give every metric (see :meth:`values`)."""
        from scipy import sparse  # scipy takes ~0.5 s to import: only metrics from predictions need it

        n, c = len(self.labels), self.num_classes
        rows = np.arange(n)
        correct = (self.pred == self.labels).astype(float)
        bucket_pred = self.pred if self.bucket_pred is None else self.bucket_pred
        blocks = [
            sparse.csr_matrix((correct, (rows, self.labels)), shape=(n, c)),  # correct per class
            sparse.csr_matrix(((bucket_pred == self.labels).astype(float), (rows, self.labels)), shape=(n, c)),
            sparse.csr_matrix((np.ones(n), (rows, self.pred)), shape=(n, c)),  # predicted per class
        ]
        if self.log_p_true is not None and self.confidence is not None:
            blocks.append(sparse.csr_matrix(-np.asarray(self.log_p_true, float)[:, None]))
            b = ece_bin(self.confidence)
            width = 1 + len(BUCKETS) * len(CONVENTIONS)
            groups = [np.zeros(n, np.int64)]  # group 0: every image; 1 + j·3 + i: bucket i of convention j
            for j, conv_b in enumerate(self._groups()):
                groups.append(1 + j * len(BUCKETS) + conv_b)
            col = np.stack(groups, 1) * ECE_BINS + b[:, None]  # N × groups: the (group, bin) of each image
            g = col.shape[1]
            r = np.repeat(rows, g)
            flat = col.ravel()
            for v in (np.ones(n), np.asarray(self.confidence, float), correct):
                blocks.append(sparse.csr_matrix((np.repeat(v, g), (r, flat)), shape=(n, width * ECE_BINS)))
        return sparse.hstack(blocks, format="csr")

    def values(self, sums: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Every metric under each convention from column sums of :meth:`design` (``sums``: R × F,
        one row per replicate): ``{convention: {metric: R values}}``."""
        sums = np.atleast_2d(np.asarray(sums, float))
        c = self.num_classes
        n_c = np.bincount(self.labels, minlength=c).astype(float)
        has = n_c > 0
        k, kb, npred = sums[:, :c], sums[:, c:2 * c], sums[:, 2 * c:3 * c]
        r = len(sums)
        nan = np.full(r, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            pca = np.where(has, 100.0 * k / np.maximum(n_c, 1), np.nan)[:, has]
            pcb = np.where(has, 100.0 * kb / np.maximum(n_c, 1), np.nan)
            total = n_c.sum()
            common: dict[str, np.ndarray] = {
                "overall": 100.0 * k.sum(1) / total if total else nan,
                "mean_class": pca.mean(1) if pca.shape[1] else nan,
                "harmonic": (np.where((pca > 0).all(1), pca.shape[1] / (1.0 / np.where(pca > 0, pca, 1)).sum(1), 0.0)
                             if pca.shape[1] else nan),
                "geometric": (np.where((pca > 0).all(1), np.exp(np.log(np.where(pca > 0, pca, 1)).mean(1)), 0.0)
                              if pca.shape[1] else nan),
                "worst": pca.min(1) if pca.shape[1] else nan,
            }
            f1_classes = has | (np.bincount(self.pred, minlength=c) > 0)
            denom = n_c[None, :] + npred
            f1 = np.where(denom > 0, 2 * k / np.where(denom > 0, denom, 1), 0.0)[:, f1_classes]
            common["macro_f1"] = 100.0 * f1.mean(1) if f1.shape[1] else nan
            ece: dict[str, np.ndarray] = {}
            if sums.shape[1] > 3 * c:
                common["nll"] = sums[:, 3 * c] / total if total else nan
                w = (1 + len(BUCKETS) * len(CONVENTIONS)) * ECE_BINS
                cnt, conf, cor = (sums[:, 3 * c + 1 + i * w: 3 * c + 1 + (i + 1) * w] for i in range(3))
                gap = np.abs(cor - conf).reshape(r, -1, ECE_BINS).sum(2)
                size = cnt.reshape(r, -1, ECE_BINS).sum(2)
                per_group = np.where(size > 0, 100.0 * gap / np.where(size > 0, size, 1), np.nan)
                ece["all"] = per_group[:, 0]
                for j, conv in enumerate(CONVENTIONS):
                    for i, b in enumerate(BUCKETS):
                        ece[f"{conv}_{b}"] = per_group[:, 1 + j * len(BUCKETS) + i]
            else:
                common["nll"] = nan
            common["ece"] = ece.get("all", nan)
        out: dict[str, dict[str, np.ndarray]] = {}
        for conv in CONVENTIONS:
            buckets = shot_buckets(self.train_counts, conv)
            row = dict(common)
            for b in BUCKETS:
                sel = (buckets == b) & has
                row[b] = pcb[:, sel].mean(1) if sel.any() else nan
                row[f"ece_{b}"] = ece.get(f"{conv}_{b}", nan) if sel.any() else nan
            out[conv] = {m: row[m] for m in METRIC_NAMES}
        return out

    def point(self) -> dict[str, dict[str, float | None]]:
        """Every metric of these predictions (None: not defined, e.g. an empty bucket)."""
        sums = np.asarray(self.design().sum(0)).reshape(1, -1)
        return {conv: {m: (None if np.isnan(v[0]) else float(v[0])) for m, v in row.items()}
                for conv, row in self.values(sums).items()}


# --------------------------------------------------------------------------- shifted test distributions (SADE)

#: SADE's test class distributions (Zhang et al. 2022): (direction, imbalance ratio), forward
#: long-tailed (the head classes of training stay the head), uniform, backward (the tail becomes the head).
SHIFTS: tuple[tuple[str, int], ...] = (*(("forward", r) for r in (50, 25, 10, 5, 2)), ("uniform", 1),
                                       *(("backward", r) for r in (2, 5, 10, 25, 50)))


def shift_name(direction: str, ratio: float) -> str:
    """``forward 50``, ``uniform``, ``backward 2``: how tables and records name a test distribution."""
    return "uniform" if direction == "uniform" or ratio == 1 else f"{direction} {ratio:g}"


def shifted_prior(train_counts: np.ndarray, imbalance_ratio: float, backward: bool = False) -> np.ndarray:
    """The test class distribution q of SADE's protocol: classes ranked by training images (most
    first, ties in class order), q ∝ ρ^(−rank/(C−1)) (forward: the most frequent training class is
    the most frequent test class, ρ times the rarest) or the ranks reversed (backward); ρ = 1 is uniform."""
    counts = np.asarray(train_counts)
    if imbalance_ratio < 1:
        raise ValueError(f"an imbalance ratio is at least 1 (1: uniform), got {imbalance_ratio}")
    c = len(counts)
    rank = np.empty(c, float)
    rank[np.argsort(-counts, kind="stable")] = np.arange(c)
    if backward:
        rank = (c - 1) - rank
    q = float(imbalance_ratio) ** (-rank / max(c - 1, 1))
    return q / q.sum()


def shifted_accuracy(per_class_accuracy: Sequence[float | None], train_counts: np.ndarray, imbalance_ratio: float,
                     backward: bool = False) -> float:
    """Accuracy (%) on a test set whose class distribution is :func:`shifted_prior`: Σ_c q_c · acc_c,
    exactly (the per-class accuracies of a balanced evaluation split, as records store them). A
    class without evaluation images (None/NaN) is left out and q renormalised over the others."""
    acc = np.array([np.nan if a is None else a for a in per_class_accuracy], float)
    q = shifted_prior(train_counts, imbalance_ratio, backward)
    ok = ~np.isnan(acc)
    if not ok.any():
        return float("nan")
    return float(np.dot(q[ok], acc[ok]) / q[ok].sum())


def prior_corrected_accuracy(scores: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
                             q: np.ndarray, kind: str = "logits", prior: str = "train") -> np.ndarray:
    """Per-class accuracy (%) after the post-hoc prior correction that knows the test prior q (an
    oracle: no method knows q): predict arg max_c log p_c + log q_c − log π_c, log p the scores'
    log-probabilities (:func:`log_probabilities`: log softmax of logits, log of probabilities) and π
    the prior they are calibrated to (``prior``, :func:`score_prior`: the training frequencies for
    plain CE; uniform for a balanced method, which would otherwise be corrected twice; logit
    adjustment, Menon et al. 2021, with SADE's test prior).
    Defined for ``logits`` and ``probabilities`` only: scores of kind ``scores`` are no
    log-probabilities, so no correction by priors is meaningful for them (``ValueError``)."""
    _check_kind(kind)
    if kind == "scores":
        raise ValueError("the prior correction needs logits or probabilities, not scores of kind 'scores'")
    counts = np.asarray(train_counts, float)
    with np.errstate(divide="ignore"):
        shift = np.log(q) - np.log(score_prior(counts, prior))
    s = np.asarray(scores)
    step = max(1, 2_000_000 // max(s.shape[1], 1)) if s.ndim == 2 else 1
    if kind == "logits":  # log softmax differs from the logits by a constant per row: same arg-max
        shift = shift.astype(s.dtype if s.dtype.kind == "f" else np.float64)
        rows = lambda i: s[i:i + step]  # noqa: E731
    else:
        rows = lambda i: log_probabilities(s[i:i + step], kind)  # noqa: E731
    pred = np.concatenate([(rows(i) + shift[None, :]).argmax(1) for i in range(0, len(s), step)]
                          or [np.zeros(0, np.int64)])
    return per_class_accuracy(pred, np.asarray(labels), len(counts))


def shifted(per_class: Sequence[float | None], train_counts: np.ndarray,
            oracle: Mapping[str, Sequence[float | None]] | None = None) -> dict[str, dict[str, float | None]]:
    """Accuracy on every test distribution of :data:`SHIFTS` (``method``) and, where the per-class
    accuracies of the prior-corrected predictions are given (``oracle``: shift name → per class),
    the oracle's: ``{shift name: {"method": …, "oracle": …}}``."""
    out = {}
    for direction, ratio in SHIFTS:
        name = shift_name(direction, ratio)
        row = {"method": shifted_accuracy(per_class, train_counts, ratio, direction == "backward")}
        if oracle and oracle.get(name) is not None:
            row["oracle"] = shifted_accuracy(oracle[name], train_counts, ratio, direction == "backward")
        out[name] = {k: (None if v != v else v) for k, v in row.items()}
    return out


def oracle_per_class(scores: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
                     kind: str = "logits", prior: str = "train") -> dict[str, list] | None:
    """Per SADE test distribution (name → per-class accuracy) of :func:`prior_corrected_accuracy`
    (scores of ``kind`` calibrated to ``prior``): what the evaluate stage stores, so that the oracle
    needs no scores afterwards. None for scores of kind ``scores``, which have no oracle."""
    _check_kind(kind)
    if kind == "scores":
        return None
    out = {}
    for direction, ratio in SHIFTS:
        pca = prior_corrected_accuracy(scores, labels, train_counts,
                                       shifted_prior(train_counts, ratio, direction == "backward"), kind, prior)
        out[shift_name(direction, ratio)] = [None if np.isnan(v) else float(v) for v in pca]
    return out
