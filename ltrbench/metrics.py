"""Accuracy metrics, defined once: overall top-1, many/medium/few under two conventions, per class.

Shot conventions (ALGORITHMS.md §5 "Shot splits"), named in every output:

* ``paper``: the VL-LTR paper and code: many if n_c ≥ 100, few if n_c ≤ 20, else medium.
* ``decoupling``: Kang et al.'s code: many if n_c > 100, few if n_c < 20, else medium.

A bucket's accuracy is the mean of its classes' per-class accuracies (on the balanced evaluation
splits of these benchmarks this equals the pooled accuracy over its samples). A bucket with no
class, or whose classes have no evaluation image, is reported as ``None`` (empty), never as 0.
"""
from __future__ import annotations

import numpy as np

CONVENTIONS: dict[str, tuple[int, int, bool]] = {
    # name: (many threshold, few threshold, inclusive)
    "paper": (100, 20, True),
    "decoupling": (100, 20, False),
}
BUCKETS = ("many", "medium", "few")
#: How each convention is written in tables and reports.
CONVENTION_NOTE = {
    "paper": "paper convention: many ≥ 100, few ≤ 20 training images",
    "decoupling": "decoupling convention: many > 100, few < 20 training images",
}


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
    preds: np.ndarray, labels: np.ndarray, train_counts: np.ndarray
) -> dict[str, object]:
    """Everything a result records: both conventions' overall/many/medium/few and per-class accuracy."""
    train_counts = np.asarray(train_counts)
    num_classes = len(train_counts)
    pca = per_class_accuracy(preds, labels, num_classes)
    overall = top1(preds, labels) if len(labels) else None
    out: dict[str, object] = {}
    for conv in CONVENTIONS:
        buckets = shot_buckets(train_counts, conv)
        row: dict[str, float | None] = {"overall": overall}
        for b in BUCKETS:
            vals = pca[(buckets == b) & ~np.isnan(pca)]
            row[b] = float(vals.mean()) if len(vals) else None
        out[conv] = row
    return {
        "metrics": out,
        "per_class_accuracy": [None if np.isnan(v) else float(v) for v in pca],
    }


def top1(preds: np.ndarray, labels: np.ndarray) -> float:
    """Micro top-1 accuracy in percent (every evaluation image counts once); K's model selection."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float(100.0 * np.mean(preds == labels)) if len(labels) else float("nan")


def mean_class_accuracy(preds: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> float:
    """Mean of per-class accuracies (%) over the classes that have evaluation images (K's τ sweep)."""
    labels = np.asarray(labels)
    n = int(labels.max()) + 1 if num_classes is None and len(labels) else (num_classes or 0)
    pca = per_class_accuracy(preds, labels, n)
    return float(np.nanmean(pca)) if np.isfinite(pca).any() else float("nan")
