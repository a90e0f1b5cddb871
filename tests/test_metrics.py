import numpy as np
import pytest

from ltrbench.metrics import bucket_counts, per_class_accuracy, shot_buckets, summarize


def test_boundaries_exactly_100_and_20():
    counts = np.array([101, 100, 99, 21, 20, 19])
    assert list(shot_buckets(counts, "paper")) == ["many", "many", "medium", "medium", "few", "few"]
    assert list(shot_buckets(counts, "decoupling")) == ["many", "medium", "medium", "medium", "medium", "few"]


def test_bucket_accuracy_is_mean_of_class_accuracies_and_conventions_differ():
    counts = np.array([100, 50, 20])
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])  # class accuracies 50, 100, 50
    out = summarize(preds, labels, counts)
    paper, dec = out["metrics"]["paper"], out["metrics"]["decoupling"]
    assert paper["overall"] == pytest.approx(100 * 4 / 6)
    assert (paper["many"], paper["medium"], paper["few"]) == (50.0, 100.0, 50.0)
    assert dec["many"] is None  # no class has more than 100 images: empty, not 0
    assert dec["medium"] == pytest.approx((50 + 100 + 50) / 3)
    assert dec["few"] is None
    assert out["per_class_accuracy"] == [50.0, 100.0, 50.0]


def test_class_without_eval_images_is_null_not_zero():
    pca = per_class_accuracy(np.array([0, 0]), np.array([0, 0]), 3)
    assert pca[0] == 100.0 and np.isnan(pca[1]) and np.isnan(pca[2])
    out = summarize(np.array([0, 0]), np.array([0, 0]), np.array([200, 5, 5]))
    assert out["metrics"]["paper"]["few"] is None
    assert out["per_class_accuracy"][1] is None


def test_bucket_counts():
    counts = np.array([300, 100, 100, 60, 20, 20, 4])
    assert bucket_counts(counts, "paper") == {"many": 3, "medium": 1, "few": 3}
    assert bucket_counts(counts, "decoupling") == {"many": 1, "medium": 5, "few": 1}
