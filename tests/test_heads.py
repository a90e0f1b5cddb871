"""Heads (ltrbench.heads) against independent computations: loops, closed forms, scikit-learn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestCentroid
from torch import nn

from ltrbench.heads import (
    ANCHOR_MODES,
    DEFAULT_TAUS,
    FUSION_RULES,
    CRTHead,
    LGRHead,
    LWSHead,
    anss_scores,
    fuse_logits,
    knn_predict,
    ncm_logits,
    select_anchors,
    select_tau,
    tau_normalize,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ NCM


@pytest.fixture
def ncm_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    train = torch.randn(10, 6, generator=g, dtype=torch.float64) + labels[:, None] * 0.5 + 2.0
    query = torch.randn(15, 6, generator=g, dtype=torch.float64) + 2.0
    return train, labels, query


def test_ncm_predictions_match_sklearn_nearest_centroid(ncm_data) -> None:
    train, labels, query = ncm_data
    tr, q = train.numpy(), query.numpy()
    mu = tr.mean(axis=0)
    tr_t = (tr - mu) / np.linalg.norm(tr - mu, axis=1, keepdims=True)
    q_t = (q - mu) / np.linalg.norm(q - mu, axis=1, keepdims=True)
    expected = NearestCentroid().fit(tr_t, labels.numpy()).predict(q_t)
    got = ncm_logits(train, labels, query).argmax(dim=1).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("feat_type", ["cl2n", "un", "l2n"])
@pytest.mark.parametrize("dist_type", ["l2", "cos"])
def test_ncm_logits_explicit_formula(ncm_data, feat_type: str, dist_type: str) -> None:
    train, labels, query = ncm_data
    mu = train.mean(dim=0)

    def transform(f: torch.Tensor) -> torch.Tensor:
        if feat_type == "un":
            return f
        f = f - mu if feat_type == "cl2n" else f
        return f / f.norm()

    expected = torch.empty(len(query), 4, dtype=torch.float64)
    for k in range(4):
        centroid = torch.stack([transform(f) for f, y in zip(train, labels) if y == k]).mean(dim=0)
        for i, f in enumerate(query):
            ft = transform(f)
            expected[i, k] = -((ft - centroid) ** 2).sum() if dist_type == "l2" else (ft * centroid).sum() / 6
    got = ncm_logits(train, labels, query, feat_type=feat_type, dist_type=dist_type)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_ncm_class_without_training_feature_gets_minus_inf(ncm_data) -> None:
    train, labels, query = ncm_data
    logits = ncm_logits(train, labels, query, num_classes=6)
    assert logits.shape == (15, 6)
    assert torch.isneginf(logits[:, 4:]).all() and torch.isfinite(logits[:, :4]).all()
    torch.testing.assert_close(logits[:, :4], ncm_logits(train, labels, query))


# ------------------------------------------------------------------------------------------ KNN


def _loop_knn(bank: torch.Tensor, bank_labels: list[int], query: torch.Tensor, k: int) -> list[int]:
    preds = []
    for q in query.tolist():
        sims = []
        for b in bank.tolist():
            dot = sum(x * y for x, y in zip(q, b))
            sims.append(dot / math.sqrt(sum(x * x for x in q) * sum(y * y for y in b)))
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        ranked = [bank_labels[j] for j in order]
        best = max(ranked.count(c) for c in ranked)
        preds.append(next(c for c in ranked if ranked.count(c) == best))
    return preds


def test_knn_matches_brute_force_loop() -> None:
    g = _gen(1)
    bank = torch.randn(40, 5, generator=g, dtype=torch.float64)
    bank_labels = torch.randint(0, 3, (40,), generator=g)
    query = torch.randn(25, 5, generator=g, dtype=torch.float64)
    for k in (1, 4, 5):  # k = 4 with 3 classes produces ties
        expected = _loop_knn(bank, bank_labels.tolist(), query, k)
        assert knn_predict(bank, bank_labels, query, k=k).tolist() == expected
        assert knn_predict(bank, bank_labels, query, k=k, max_chunk_elems=7).tolist() == expected


def test_knn_tie_goes_to_highest_ranked_class() -> None:
    angles = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    lengths = torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0, 1.0], dtype=torch.float64)  # cosine ignores them
    bank = torch.stack([angles.cos(), angles.sin()], dim=1) * lengths[:, None]
    bank_labels = torch.tensor([7, 3, 3, 7, 1, 3])
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)  # ranks: 7, 3, 3, 7, 1 → tie 7/3
    assert knn_predict(bank, bank_labels, query, k=5).tolist() == [7]
    assert _loop_knn(bank, bank_labels.tolist(), query, 5) == [7]
    assert knn_predict(bank, bank_labels, query, k=6).tolist() == [3]  # 3 votes beat 2


# ------------------------------------------------------------------------------------------ τ-norm


def test_tau_normalize_closed_forms() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    assert torch.equal(tau_normalize(w, 0.0), w)
    torch.testing.assert_close(tau_normalize(w, 1.0).norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(tau_normalize(w, 0.5)[0], w[0] / math.sqrt(5.0))
    torch.testing.assert_close(tau_normalize(w, 2.0)[1], w[1] / 4.0)


def test_select_tau_picks_smallest_tau_of_best_accuracy() -> None:
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    # class-1 sample right iff 2^(1-τ) < 1.5 (τ > 0.415); class-0 sample right iff 2^(1-τ) > 0.9 (τ < 1.152)
    feats = torch.tensor([[1.0, 0.9], [1.0, 1.5]])
    best, accs = select_tau(w, feats, torch.tensor([0, 1]))
    assert list(accs) == list(DEFAULT_TAUS) and len(accs) == 21
    assert best == 0.5
    assert accs[0.0] == 0.5 and accs[0.5] == 1.0 and accs[1.1] == 1.0 and accs[1.2] == 0.5


def test_select_tau_uses_mean_per_class_accuracy() -> None:
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.5], [1.0, 0.5], [1.0, 1.2], [1.0, 1.5]])
    labels = torch.tensor([0, 0, 0, 1])
    # micro accuracy is 0.75 at both τ (a tie → τ = 0); the per-class mean is 0.5 vs 0.833
    best, accs = select_tau(w, feats, labels, taus=[0.0, 1.0])
    assert best == 1.0
    assert accs[0.0] == pytest.approx(0.5) and accs[1.0] == pytest.approx(5 / 6)


# ------------------------------------------------------------------------------------------ cRT / LWS


def test_crt_head_is_fresh_linear_with_bias() -> None:
    head = CRTHead(16, 5)
    assert isinstance(head, nn.Linear) and head.bias is not None
    assert head.weight.shape == (5, 16) and head.bias.shape == (5,)
    assert head.weight.abs().max() <= 1 / math.sqrt(16)  # PyTorch default (Kaiming-uniform bound)


def test_lws_head_scales_logits_and_bias() -> None:
    g = _gen(2)
    w, b = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    x = torch.randn(3, 6, generator=g)
    head = LWSHead(w, b)
    assert [name for name, _ in head.named_parameters()] == ["scales"]
    torch.testing.assert_close(head(x), x @ w.T + b)
    with torch.no_grad():
        head.scales.copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
    torch.testing.assert_close(head(torch.zeros(1, 6)), (head.scales * b)[None].detach())
    torch.testing.assert_close(head(x), (x @ w.T + b) * head.scales.detach())
    w.add_(1.0)  # the head holds its own frozen copy
    torch.testing.assert_close(head(torch.zeros(1, 6)), (head.scales * b)[None].detach())


# ------------------------------------------------------------------------------------------ LGR


def _perturb(head: LGRHead, seed: int = 3) -> LGRHead:
    g = _gen(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if not name.startswith("visual"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return head


def _make_head(n_cls: int = 5, m: int = 4, dim: int = 8, seed: int = 0, **kw) -> LGRHead:
    g = _gen(seed)
    anchors = torch.randn(n_cls, m, dim, generator=g) * 2
    mask = torch.ones(n_cls, m, dtype=torch.bool)
    mask[1, 2:] = False
    mask[3, 1:] = False
    anchors[~mask] = 0.0
    return _perturb(LGRHead(anchors, mask, logit_scale=30.0, **kw))


def _reference_text_logits(head: LGRHead, x: torch.Tensor) -> torch.Tensor:
    """docs/algorithms.md#lgr-attention written per class, attending only to the real anchors."""
    dim = x.shape[1]
    q = head.q_proj(head.ln_q(x))
    cols = []
    for anchors, mask in zip(head.anchors, head.anchor_mask):
        real = anchors[mask]
        attn = torch.softmax(q @ head.k_proj(head.ln_k(real)).T / math.sqrt(dim), dim=1)
        cols.append(head.logit_scale * F.cosine_similarity(x, attn @ real, dim=1))
    return torch.stack(cols, dim=1)


def test_lgr_init_and_parameter_names() -> None:
    anchors = torch.randn(3, 2, 8)
    head = LGRHead(anchors, torch.ones(3, 2, dtype=torch.bool), logit_scale=50.0)
    assert torch.equal(head.q_proj.weight, torch.eye(8)) and torch.equal(head.k_proj.weight, torch.eye(8))
    assert head.q_proj.bias is None and head.k_proj.bias is None
    assert head.ln_q.eps == 1e-5 and torch.equal(head.ln_k.weight, torch.ones(8))
    assert head.visual_fc[0].weight.shape == (32, 8) and head.visual_fc[2].weight.shape == (3, 32)
    assert torch.equal(head.visual_fc[0].bias, torch.zeros(32))
    assert LGRHead(anchors, torch.ones(3, 2, dtype=torch.bool), 50.0, hidden=5).visual_fc[2].in_features == 5
    big = LGRHead(torch.randn(4, 2, 256), torch.ones(4, 2, dtype=torch.bool), 50.0)
    assert 0.015 < big.visual_fc[0].weight.std() < 0.025
    names = {n for n, _ in head.named_parameters()}
    visual = {n for n in names if "visual" in n}
    assert visual == {"visual_fc.0.weight", "visual_fc.0.bias", "visual_fc.2.weight", "visual_fc.2.bias"}
    text_lr = {"ln_q.weight", "ln_q.bias", "ln_k.weight", "ln_k.bias", "q_proj.weight", "k_proj.weight"}
    assert names - visual == text_lr
    assert {n for n, _ in head.named_buffers()} == {"anchors", "anchor_mask", "logit_scale"}
    assert head.logit_scale.item() == 50.0
    anchors.add_(1.0)  # the head keeps its own copy
    assert not torch.equal(head.anchors, anchors)


def test_lgr_matches_per_class_reference() -> None:
    head = _make_head()
    x = torch.randn(6, 8, generator=_gen(9)) * 3
    z_img, z_txt = head(x)
    assert z_img.shape == z_txt.shape == (6, 5)
    torch.testing.assert_close(z_txt, _reference_text_logits(head, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_img, head.visual_fc(x))


def test_lgr_single_anchor_is_scaled_cosine() -> None:
    g = _gen(4)
    anchors = torch.randn(7, 1, 8, generator=g)
    head = _perturb(LGRHead(anchors, torch.ones(7, 1, dtype=torch.bool), logit_scale=12.5))
    x = torch.randn(5, 8, generator=g)
    expected = 12.5 * F.normalize(x, dim=1) @ F.normalize(anchors[:, 0], dim=1).T
    torch.testing.assert_close(head(x)[1], expected, rtol=1e-5, atol=1e-5)


def test_lgr_padded_anchors_get_zero_attention() -> None:
    head = _make_head()
    x = torch.randn(6, 8, generator=_gen(5))
    before = head(x)[1]
    with torch.no_grad():
        n_pad = int((~head.anchor_mask).sum())
        head.anchors[~head.anchor_mask] = 1e3 * torch.randn(n_pad, 8, generator=_gen(6))
    assert torch.equal(head(x)[1], before)
    with torch.no_grad():
        head.anchors[1, 0] += 1.0  # a real anchor does matter
    assert not torch.allclose(head(x)[1][:, 1], before[:, 1])


def test_lgr_rejects_class_without_anchor() -> None:
    mask = torch.ones(3, 2, dtype=torch.bool)
    mask[2] = False
    with pytest.raises(ValueError, match="no real anchor"):
        LGRHead(torch.randn(3, 2, 8), mask, 10.0)


def test_lgr_eval_caches_keys_and_matches_training_forward() -> None:
    head = _make_head()
    calls = []
    head.k_proj.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(6, 8, generator=_gen(7))
    train_out = head(x)
    head(x)
    assert len(calls) == 2  # training mode: recomputed each time
    head.eval()
    with torch.no_grad():
        eval_out = head(x)
        head(x)
        head(x[:2])
    assert len(calls) == 3  # eval + no_grad: computed once
    for a, b in zip(train_out, eval_out):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    head.train()
    head.eval()
    with torch.no_grad():
        head(x)
    assert len(calls) == 4  # .train() cleared the cache


def test_lgr_key_cache_invalidated_by_parameter_change() -> None:
    head = _make_head().eval()
    x = torch.randn(6, 8, generator=_gen(8))
    with torch.no_grad():
        head(x)
        head.k_proj.weight.mul_(0.5)  # as an optimiser step would
        torch.testing.assert_close(head(x)[1], _reference_text_logits(head, x), rtol=1e-5, atol=1e-5)
        other = _make_head(seed=1).eval()
        other(x)
        other.load_state_dict(head.state_dict())
        torch.testing.assert_close(other(x)[1], head(x)[1])


def test_lgr_gradients_reach_head_parameters_not_anchors() -> None:
    head = _make_head()
    x = torch.randn(6, 8, generator=_gen(10))
    z_img, z_txt = head(x)
    (z_img.pow(2).sum() + z_txt.pow(2).sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert not head.anchors.requires_grad and head.anchors.grad is None
    assert not head.logit_scale.requires_grad
    head.eval()  # eval mode with gradients on: keys are not taken from the no-grad cache
    head.zero_grad()
    head(x)[1].pow(2).sum().backward()
    assert head.k_proj.weight.grad.abs().sum() > 0


def test_lgr_v_detach_same_forward_different_gradient() -> None:
    plain, detached = _make_head(), _make_head(v_detach=True)
    x = torch.randn(6, 8, generator=_gen(11))
    z_plain, z_det = plain(x)[1], detached(x)[1]
    torch.testing.assert_close(z_plain, z_det)
    z_plain.pow(2).sum().backward()
    z_det.pow(2).sum().backward()
    assert not torch.allclose(plain.q_proj.weight.grad, detached.q_proj.weight.grad)


def test_lgr_class_chunking_matches_single_chunk() -> None:
    head = _make_head(n_cls=23, m=4, dim=16)
    x = torch.randn(5, 16, generator=_gen(12))
    full = head(x)[1]
    head.max_chunk_elems = 5 * 4 * 3  # three classes per chunk
    torch.testing.assert_close(head(x)[1], full, rtol=1e-5, atol=1e-5)


def test_lgr_inference_mode_cache_does_not_break_later_training() -> None:
    head = _make_head().eval()
    x = torch.randn(6, 8, generator=_gen(14))
    with torch.inference_mode():
        z_eval = head(x)[1]
    head.train()
    z_train = head(x)[1]
    z_train.sum().backward()  # would fail if a cached inference tensor were saved for backward
    torch.testing.assert_close(z_train.detach(), z_eval, rtol=1e-6, atol=1e-6)


def test_lgr_runs_under_cpu_autocast() -> None:
    head = _make_head()
    x = torch.randn(6, 8, generator=_gen(13))
    ref = head(x)[1]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_img, z_txt = head(x)
        head.eval()
        with torch.no_grad():
            z_eval = head(x)[1]
    assert z_txt.dtype == torch.float32
    torch.testing.assert_close(z_txt, ref, rtol=0.05, atol=0.5)
    torch.testing.assert_close(z_eval, ref, rtol=0.05, atol=0.5)


# ------------------------------------------------------------------------------------------ fusion


def test_fuse_logits_rules() -> None:
    g = _gen(14)
    z_img, z_txt = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g) * 3
    p_img = z_img.exp() / z_img.exp().sum(dim=1, keepdim=True)
    p_txt = z_txt.exp() / z_txt.exp().sum(dim=1, keepdim=True)
    assert FUSION_RULES == ("paper", "alpha", "logit_sum")
    torch.testing.assert_close(fuse_logits(z_img, z_txt, "paper"), p_img + p_txt)
    torch.testing.assert_close(fuse_logits(z_img, z_txt, "alpha"), 0.2 * p_img + 0.8 * p_txt)
    torch.testing.assert_close(fuse_logits(z_img, z_txt, "alpha", alpha=0.7), 0.7 * p_img + 0.3 * p_txt)
    torch.testing.assert_close(fuse_logits(z_img, z_txt, "logit_sum"), z_img + z_txt)
    torch.testing.assert_close(LGRHead.fuse_logits(z_img, z_txt, "paper"), p_img + p_txt)
    with pytest.raises(ValueError, match="rule"):
        fuse_logits(z_img, z_txt, "sum")


# ------------------------------------------------------------------------------------------ AnSS


def test_anss_scores_match_hand_loop() -> None:
    g = _gen(15)
    text = torch.randn(7, 5, generator=g, dtype=torch.float64)
    text_labels = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    images = torch.randn(9, 5, generator=g, dtype=torch.float64)
    image_labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1])  # class 3 has no image
    s = 20.0
    expected = []
    for t, c in zip(text.tolist(), text_labels.tolist()):
        norm_t = math.sqrt(sum(a * a for a in t))
        z = [s * sum(a * b for a, b in zip(t, e)) / (norm_t * math.sqrt(sum(b * b for b in e)))
             for e in images.tolist()]
        lse = math.log(sum(math.exp(v) for v in z))
        own = [j for j, y in enumerate(image_labels.tolist()) if y == c]
        expected.append(sum(lse - z[j] for j in own) / len(own) if own else float("nan"))
    for chunk in (2**25, 9):
        got = anss_scores(text, text_labels, images, image_labels, s, max_chunk_elems=chunk)
        want = torch.tensor(expected, dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert torch.isnan(got[6]) and torch.isfinite(got[:6]).all()


def test_select_anchors_anss_keeps_lowest_and_pads() -> None:
    emb = [offset + torch.arange(float(n))[:, None].repeat(1, 3) for offset, n in ((0, 5), (10, 2), (20, 4))]
    scores = [torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7]), torch.tensor([0.2, 0.1]), torch.full((4,), float("nan"))]
    anchors, mask, chosen = select_anchors(scores, emb, M=3)
    assert ANCHOR_MODES == ("anss", "cutoff", "random")
    assert [c.tolist() for c in chosen] == [[1, 3, 0], [1, 0], [0, 1, 2]]  # NaN class: corpus order
    assert anchors.shape == (3, 3, 3)
    assert anchors[0, :, 0].tolist() == [1.0, 3.0, 0.0]
    assert anchors[1, :, 0].tolist() == [11.0, 10.0, 0.0] and torch.equal(anchors[1, 2], torch.zeros(3))
    assert mask.tolist() == [[True, True, True], [True, True, False], [True, True, True]]


def test_select_anchors_cutoff_and_random() -> None:
    emb = [torch.randn(6, 4, generator=_gen(16)), torch.randn(2, 4, generator=_gen(17))]
    anchors, mask, chosen = select_anchors(None, emb, M=4, mode="cutoff")
    assert [c.tolist() for c in chosen] == [[0, 1, 2, 3], [0, 1]]
    assert torch.equal(anchors[0], emb[0][:4]) and mask[1].tolist() == [True, True, False, False]

    first = select_anchors(None, emb, M=4, mode="random", generator=_gen(18))
    again = select_anchors(None, emb, M=4, mode="random", generator=_gen(18))
    assert all(torch.equal(a, b) for a, b in zip(first[2], again[2]))
    idx = first[2][0]
    assert len(set(idx.tolist())) == 4 and all(0 <= i < 6 for i in idx.tolist())
    assert torch.equal(first[0][0], emb[0][idx]) and sorted(first[2][1].tolist()) == [0, 1]
    with pytest.raises(ValueError, match="scores"):
        select_anchors(None, emb, M=4, mode="anss")
