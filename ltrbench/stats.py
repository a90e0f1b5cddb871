"""Uncertainty of the numbers: bootstrap intervals over test images, intervals over seeds, paired
comparisons of two methods and Holm's correction.

The bootstrap (:func:`bootstrap`) resamples the evaluation images *stratified by class*: each
replicate draws, within every class c, n_c of its n_c images with replacement, so every class keeps
its size, as the balanced test sets of these benchmarks do. It is vectorised: a replicate is a
vector of per-image weights (how often each image was drawn), and every metric of
:class:`ltrbench.metrics.Predictions` is a function of weighted sums over images, so R replicates
are one sparse matrix product. For a class's 0/1 correctness alone, its resampled count of correct
images is exactly Binomial(n_c, acc_c); the weights give that and, from the same draws, the
confidence and likelihood sums that NLL, ECE and macro-F1 need. Intervals are percentile intervals
(2.5 % and 97.5 % of the replicates), seeded (``seed``), with :data:`REPLICATES` replicates.

Paired (:func:`paired_bootstrap`): two methods' runs on the same test images and seeds share the
same image weights in every replicate, and the statistic is the difference of their means over
seeds, so what the two have in common (the test images' difficulty) cancels. Its two-sided p-value
is ``min(1, 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)))`` with the add-one correction (a method against itself:
every replicate is 0, p = 1). Over seeds (:func:`paired_t`, three seeds or more) a paired t-test
of the per-seed values. :func:`t_interval`: the interval over seeds is Student's t on the seeds'
values (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n); the ``--ci bootstrap`` alternative, :func:`pooled_intervals`,
bootstraps the test images with the seeds paired (the mean over seeds of every replicate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import LtrBenchError
from .metrics import LOWER_IS_BETTER, Predictions, oracle_per_class, shifted, summarize

REPLICATES = 2000
LEVEL = 0.95
#: Replicate weights are built in chunks of at most this many (replicates × images) entries.
_CHUNK = 4_000_000


def t_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """Student's t interval of the mean of ``values`` (NaN dropped); (NaN, NaN) with fewer than two."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], float)
    if len(v) < 2:
        return float("nan"), float("nan")
    from scipy.stats import t  # scipy.stats takes ~1 s to import: only intervals need it

    half = float(t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return float(v.mean() - half), float(v.mean() + half)


def _weights(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` × N resampling weights, stratified by class (every class keeps its n_c images)."""
    n = len(labels)
    order = np.argsort(labels, kind="stable")
    sizes = np.bincount(labels)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # for each replicate and each image slot: a draw among the slot's class members
    slot_start = np.repeat(starts, sizes)
    slot_size = np.repeat(sizes, sizes)
    draws = slot_start[None, :] + np.floor(rng.random((count, n)) * slot_size[None, :]).astype(np.int64)
    flat = (np.arange(count)[:, None] * n + order[draws]).ravel()
    return np.bincount(flat, minlength=count * n).reshape(count, n).astype(float)


def replicate_sums(designs: Sequence, labels: np.ndarray, replicates: int = REPLICATES,
                   seed: int = 0) -> Iterable[list[np.ndarray]]:
    """Column sums of each design matrix (one per run, rows = the same images) under the same
    ``replicates`` stratified resamples, chunk by chunk: per chunk, a list of r × F arrays."""
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    n = max(len(labels), 1)
    step = max(1, _CHUNK // max(n, max(x.shape[1] for x in designs)))
    done = 0
    while done < replicates:
        w = _weights(labels, min(step, replicates - done), rng)
        yield [np.asarray((x.T @ w.T).T) for x in designs]
        done += len(w)


def replicate_values(preds: Sequence[Predictions], replicates: int = REPLICATES,
                     seed: int = 0) -> list[dict[str, dict[str, np.ndarray]]]:
    """Every metric of each run (on the same images) under the same ``replicates`` stratified
    resamples: per run, ``{convention: {metric: R values}}`` (computed chunk by chunk, so that a
    data set of many classes never holds R × F sums at once)."""
    designs = [p.design() for p in preds]
    parts = [[p.values(s) for p, s in zip(preds, sums)] for sums in
             replicate_sums(designs, preds[0].labels, replicates, seed)]
    return [{conv: {m: np.concatenate([chunk[i][conv][m] for chunk in parts]) for m in row}
             for conv, row in parts[0][i].items()} for i in range(len(preds))]


def bootstrap(pred: Predictions, replicates: int = REPLICATES, seed: int = 0,
              level: float = LEVEL) -> dict[str, dict[str, list[float] | None]]:
    """The percentile interval of every metric of one run: ``{convention: {metric: [lo, hi]}}``
    (None where the metric is undefined)."""
    (vals,) = replicate_values([pred], replicates, seed)
    return {conv: {m: _percentile(v, level) for m, v in row.items()} for conv, row in vals.items()}


def _percentile(v: np.ndarray, level: float) -> list[float] | None:
    v = np.asarray(v, float)
    if np.isnan(v).any():
        return None
    lo, hi = np.quantile(v, [0.5 - level / 2, 0.5 + level / 2])
    return [float(lo), float(hi)]


def pooled_intervals(preds: Sequence[Predictions], replicates: int = REPLICATES, seed: int = 0,
                     level: float = LEVEL) -> dict[str, dict[str, list[float] | None]]:
    """The bootstrap interval of the mean over seeds of every metric, ``{convention: {metric:
    [lo, hi]}}`` (runs on the same test images, resampled together: the seeds stay paired)."""
    _same_images(preds)
    vals = replicate_values(preds, replicates, seed)
    return {conv: {m: _percentile(np.mean([v[conv][m] for v in vals], axis=0), level) for m in row}
            for conv, row in vals[0].items()}


def _same_images(preds: Sequence[Predictions]) -> None:

    first = preds[0].labels
    for p in preds[1:]:
        if len(p.labels) != len(first) or not np.array_equal(p.labels, first):
            raise LtrBenchError("The runs compared were not evaluated on the same test images (their stored labels "
                                "differ in number or order): a paired comparison needs runs on the same data set, "
                                "split and world; compare runs of one results folder made with the same --set values.")


@dataclass(frozen=True)
class Paired:
    """A paired comparison of A − B on one metric (:func:`paired_bootstrap`)."""

    metric: str
    delta: float  # mean over seeds of A − B
    low: float
    high: float
    p_value: float  # paired bootstrap, two-sided
    seeds: int
    images: int
    a: float  # mean over seeds of A
    b: float
    t_stat: float = float("nan")  # paired t over seeds (≥ 3 seeds)
    t_p_value: float = float("nan")

    @property
    def better(self) -> str | None:
        """``A`` or ``B``: the one better on this metric, where Δ ≠ 0 (lower is better for NLL/ECE)."""
        if self.delta == 0 or math.isnan(self.delta):
            return None
        lower = self.metric in LOWER_IS_BETTER
        return "A" if (self.delta > 0) != lower else "B"


def bootstrap_p(deltas: np.ndarray) -> float:
    """Two-sided p-value of H0 "Δ = 0" from bootstrap replicates of Δ (add-one corrected, ≤ 1)."""
    d = np.asarray(deltas, float)
    r = len(d)
    below, above = (np.sum(d <= 0) + 1) / (r + 1), (np.sum(d >= 0) + 1) / (r + 1)
    return float(min(1.0, 2 * min(below, above)))


def paired_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Paired t-test of per-seed values (t, two-sided p); (NaN, NaN) with fewer than three pairs,
    (0, 1) when every difference is 0."""
    d = np.asarray(a, float) - np.asarray(b, float)
    d = d[~np.isnan(d)]
    if len(d) < 3:
        return float("nan"), float("nan")
    if not d.any():
        return 0.0, 1.0
    from scipy.stats import ttest_1samp  # see t_interval

    res = ttest_1samp(d, 0.0)
    return float(res.statistic), float(res.pvalue)


def paired(a: Sequence[Predictions], b: Sequence[Predictions], metrics: Sequence[str], convention: str = "paper",
           replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL) -> dict[str, Paired]:
    """A − B on each of ``metrics`` from one set of paired replicates: the runs ``a[i]`` and ``b[i]``
    are one seed's (same test images); Δ is the mean over seeds, its interval and p-value from the
    paired stratified bootstrap, and, with three seeds or more, a paired t-test over seeds."""
    if len(a) != len(b) or not a:
        raise ValueError("a paired comparison needs as many runs of A as of B, one per seed, at least one")
    _same_images([*a, *b])
    runs = (*a, *b)
    vals = [v[convention] for v in replicate_values(runs, replicates, seed)]
    points = [p.point()[convention] for p in runs]
    k = len(a)
    out = {}
    for m in metrics:
        pt = [float("nan") if q[m] is None else q[m] for q in points]
        pa, pb = pt[:k], pt[k:]
        reps = np.mean([v[m] for v in vals[:k]], axis=0) - np.mean([v[m] for v in vals[k:]], axis=0)
        iv = None if np.isnan(reps).any() else _percentile(reps, level)
        t_stat, t_p = paired_t(pa, pb)
        out[m] = Paired(m, float(np.mean(pa) - np.mean(pb)), *(iv if iv else (float("nan"), float("nan"))),
                        bootstrap_p(reps) if iv else float("nan"), k, len(a[0].labels), float(np.mean(pa)),
                        float(np.mean(pb)), t_stat, t_p)
    return out


def paired_bootstrap(a: Sequence[Predictions], b: Sequence[Predictions], metric: str, convention: str = "paper",
                     replicates: int = REPLICATES, seed: int = 0, level: float = LEVEL) -> Paired:
    """:func:`paired` on one metric."""
    return paired(a, b, [metric], convention, replicates, seed, level)[metric]


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    ok = np.nonzero(~np.isnan(p))[0]
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def evaluation(scores: np.ndarray, labels: np.ndarray, train_counts: np.ndarray,
               bucket_scores: np.ndarray | None = None, seed: int = 0, score_kind: str = "logits",
               score_prior: str = "train") -> dict[str, object]:
    """What the evaluate stage records of a method's scores (N × C): :func:`ltrbench.metrics.summarize`'s
    metrics and per-class accuracy, the bootstrap ``intervals`` of every metric (:func:`bootstrap`,
    seeded by ``seed``), the per-image ``predictions`` (:meth:`Predictions.to_json`), the SADE
    ``shifted`` accuracies and the oracle's per-class accuracies (``shifted_oracle_per_class``).
    ``bucket_scores``: the scores many/medium/few come from, when not ``scores``; ``score_kind``: what
    ``scores`` are (:data:`ltrbench.metrics.SCORE_KINDS`: how ``nll``, ``ece`` and the oracle read
    them; no oracle, ``None``, for ``scores``); ``score_prior``: the class distribution they are
    calibrated to (:data:`ltrbench.metrics.SCORE_PRIORS`), which the oracle corrects from."""
    scores = np.asarray(scores)
    labels = np.asarray(labels, np.int64)
    counts = np.asarray(train_counts)
    bucket = None if bucket_scores is None else np.asarray(bucket_scores).argmax(1)
    res = summarize(None, labels, counts, scores=scores, bucket_preds=bucket, score_kind=score_kind)
    p = Predictions.from_scores(scores, labels, counts, kind=score_kind)
    p = Predictions(p.labels, p.pred, p.train_counts, bucket, p.log_p_true, p.confidence)
    oracle = oracle_per_class(scores, labels, counts, score_kind, score_prior)
    return {
        **res,
        "intervals": bootstrap(p, seed=seed) if len(labels) else {},
        "interval_method": f"95 % percentile bootstrap over evaluation images, stratified by class, {REPLICATES} "
                           "replicates (ltrbench.stats.bootstrap)",
        "predictions": p.to_json(),
        "shifted": shifted(res["per_class_accuracy"], counts, oracle),
        "shifted_oracle_per_class": oracle,
        "score_kind": score_kind,
        "score_prior": score_prior,
    }
