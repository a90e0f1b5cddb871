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


# -- what the scores are (score_kind): how nll, ece and the oracle prior correction read them ------


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_probabilities_are_read_as_probabilities_not_as_logits():
    from ltrbench.metrics import probabilities
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 7)) * 3
    labels = rng.integers(0, 7, 50)
    p = _softmax(z)
    pred_z, lp_z, conf_z = probabilities(z, labels, "logits")
    pred_p, lp_p, conf_p = probabilities(2 * p, labels, "probabilities")  # VL-LTR's paper rule sums to 2
    np.testing.assert_array_equal(pred_z, pred_p)
    np.testing.assert_allclose(lp_p, np.log(p[np.arange(50), labels]), rtol=1e-12)
    np.testing.assert_allclose(lp_z, lp_p, rtol=1e-9)
    np.testing.assert_allclose(conf_p, p.max(1), rtol=1e-12)
    _, lp_wrong, _ = probabilities(p, labels, "logits")  # what evaluate v2 did with VL-LTR's scores
    assert np.abs(lp_wrong - lp_p).max() > 0.5
    with pytest.raises(ValueError, match="score kind"):
        probabilities(z, labels, "logprobs")


def _shifted_case(seed: int, ratio: float, backward: bool):
    """Long-tailed counts, random logits and labels, and a SADE test prior q."""
    from ltrbench.metrics import shifted_prior
    rng = np.random.default_rng(seed)
    counts = np.array([400, 150, 60, 20, 8, 3])
    return counts, rng.normal(size=(300, 6)) * 2, rng.integers(0, 6, 300), shifted_prior(counts, ratio, backward)


def test_the_oracle_reads_probabilities_as_their_logits_would_be_read_and_scores_have_none():
    from ltrbench.metrics import oracle_per_class, prior_corrected_accuracy
    counts, z, labels, q = _shifted_case(1, 10, True)
    by_logits = prior_corrected_accuracy(z, labels, counts, q, "logits")
    by_probs = prior_corrected_accuracy(_softmax(z), labels, counts, q, "probabilities")
    np.testing.assert_array_equal(by_logits, by_probs)
    assert not np.array_equal(by_probs, prior_corrected_accuracy(_softmax(z), labels, counts, q, "logits"))
    assert oracle_per_class(z, labels, counts, "scores") is None
    with pytest.raises(ValueError, match="logits or probabilities"):
        prior_corrected_accuracy(z, labels, counts, q, "scores")


def test_the_oracle_corrects_from_the_prior_the_scores_are_calibrated_to():
    from ltrbench.metrics import per_class_accuracy, prior_corrected_accuracy, score_prior
    counts, z, labels, q = _shifted_case(2, 25, False)
    np.testing.assert_allclose(score_prior(counts, "sqrt"), np.sqrt(counts) / np.sqrt(counts).sum())
    # a balanced method (uniform prior) is moved to q only: arg max z + log q, not corrected twice
    np.testing.assert_array_equal(prior_corrected_accuracy(z, labels, counts, q, "logits", "uniform"),
                                  per_class_accuracy((z + np.log(q)).argmax(1), labels, 6))
    np.testing.assert_array_equal(prior_corrected_accuracy(z, labels, counts, q, "logits", "train"),
                                  per_class_accuracy((z + np.log(q) - np.log(counts / counts.sum())).argmax(1),
                                                     labels, 6))
    with pytest.raises(ValueError, match="score prior"):
        score_prior(counts, "balanced")
