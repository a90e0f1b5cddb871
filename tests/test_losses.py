"""Stage-1 losses (ltrbench.losses) against independent loop computations on tiny batches."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ltrbench.losses import (
    DISTILL_TYPES,
    class_contrastive_loss,
    clip_logits,
    cvlp_loss,
    distillation_loss,
    feature_distillation_loss,
    soft_cross_entropy,
)


def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.double().tolist()


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _loop_logits(img: torch.Tensor, txt: torch.Tensor, scale: float) -> list[list[float]]:
    a, b = [_unit(r) for r in _rows(img)], [_unit(r) for r in _rows(txt)]
    return [[scale * sum(x * y for x, y in zip(ai, bj)) for bj in b] for ai in a]


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row]


def _softmax(row: list[float]) -> list[float]:
    return [math.exp(x) for x in _log_softmax(row)]


def _transpose(z: list[list[float]]) -> list[list[float]]:
    return [list(col) for col in zip(*z)]


def _loop_smooth_ce(z: list[list[float]], labels: list[int], eps: float) -> float:
    """ℓ(Z,Q) of docs/algorithms.md#cvlp-loss written term by term."""
    b, total = len(z), 0.0
    for i in range(b):
        logp = _log_softmax(z[i])
        n_pos = sum(1 for j in range(b) if labels[j] == labels[i])
        hard = -sum(logp[j] / n_pos for j in range(b) if labels[j] == labels[i])
        uniform = -sum(logp) / b
        total += (1 - eps) * hard + eps * uniform
    return total / b


def _loop_kd(z: list[list[float]], zt: list[list[float]]) -> float:
    total = 0.0
    for row, trow in zip(z, zt):
        total -= sum(p * lq for p, lq in zip(_softmax(trow), _log_softmax(row)))
    return total / len(z)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    txt = torch.randn(6, 5, generator=g, dtype=torch.float64) * 2
    labels = torch.tensor([0, 1, 0, 2, 1, 0])  # repeated labels
    return img, txt, labels


def test_soft_cross_entropy_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 7, generator=g, dtype=torch.float64)
    targets = torch.rand(4, 7, generator=g, dtype=torch.float64)
    rows = zip(_rows(logits), _rows(targets))
    expected = sum(-sum(t * lp for t, lp in zip(trow, _log_softmax(row))) for row, trow in rows) / 4
    assert soft_cross_entropy(logits, targets).item() == pytest.approx(expected, rel=1e-12)


def test_clip_logits_normalises_and_scales(batch) -> None:
    img, txt, _ = batch
    z = clip_logits(img, txt, 7.5)
    assert z.shape == (6, 6)
    assert torch.allclose(z, torch.tensor(_loop_logits(img, txt, 7.5), dtype=torch.float64))
    assert torch.allclose(clip_logits(img * 4, txt * 0.1, 7.5), z)


def test_class_contrastive_loss_matches_hand_loop_with_repeated_labels(batch) -> None:
    img, txt, labels = batch
    z = _loop_logits(img, txt, 10.0)
    lab = labels.tolist()
    expected = 0.5 * (_loop_smooth_ce(z, lab, 0.1) + _loop_smooth_ce(_transpose(z), lab, 0.1))
    got = class_contrastive_loss(img, txt, labels, 10.0, smoothing=0.1)
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # the repeated labels matter: treating them as distinct gives a different value
    distinct = class_contrastive_loss(img, txt, torch.arange(6), 10.0, smoothing=0.1)
    assert abs(distinct.item() - expected) > 1e-3


def test_class_contrastive_loss_is_clip_loss_for_distinct_labels(batch) -> None:
    img, txt, _ = batch
    z = 100.0 * (img / img.norm(dim=1, keepdim=True)) @ (txt / txt.norm(dim=1, keepdim=True)).T
    target = torch.arange(6)
    clip = 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.T, target))
    got = class_contrastive_loss(img, txt, torch.tensor([5, 3, 9, 0, 1, 2]), 100.0, smoothing=0.0)
    assert got.item() == pytest.approx(clip.item(), rel=1e-10)


def test_class_contrastive_loss_accepts_tensor_scale_with_gradient(batch) -> None:
    img, txt, labels = batch
    log_scale = torch.tensor(math.log(100.0), dtype=torch.float64, requires_grad=True)
    loss = class_contrastive_loss(img, txt, labels, log_scale.exp())
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    assert loss.item() == pytest.approx(class_contrastive_loss(img, txt, labels, 100.0).item(), rel=1e-12)


def test_distillation_loss_matches_hand_loop_and_detaches_teacher() -> None:
    g = torch.Generator().manual_seed(2)
    student = torch.randn(5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = (torch.randn(5, 5, generator=g, dtype=torch.float64) * 3).requires_grad_()
    s, t = _rows(student.detach()), _rows(teacher.detach())
    expected = 0.5 * (_loop_kd(s, t) + _loop_kd(_transpose(s), _transpose(t)))
    loss = distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_feature_distillation_loss_formula() -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64)
    t = torch.randn(4, 6, generator=g, dtype=torch.float64)
    rows = zip(_rows(s), _rows(t))
    expected = sum(sum((a - b) ** 2 for a, b in zip(_unit(sr), _unit(tr))) for sr, tr in rows) / 4
    assert feature_distillation_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert feature_distillation_loss(s, 2.5 * s).item() == pytest.approx(0.0, abs=1e-12)


def test_cvlp_loss_combines_parts(batch) -> None:
    img, txt, labels = batch
    t_img, t_txt = img + 0.3, txt - 0.2
    teacher = {"teacher_image_emb": t_img, "teacher_text_emb": t_txt}
    out = cvlp_loss(img, txt, labels, 20.0, distill="logits", beta=0.3, **teacher)
    ccl = class_contrastive_loss(img, txt, labels, 20.0, smoothing=0.1)
    dis = distillation_loss(clip_logits(img, txt, 20.0), clip_logits(t_img, t_txt, 100.0))
    assert out.ccl.item() == pytest.approx(ccl.item(), rel=1e-12)
    assert out.dis.item() == pytest.approx(dis.item(), rel=1e-12)
    assert out.total.item() == pytest.approx(0.7 * ccl.item() + 0.3 * dis.item(), rel=1e-12)

    feat = cvlp_loss(img, txt, labels, 20.0, distill="feature", beta=0.5, **teacher)
    fdis = 0.5 * (feature_distillation_loss(img, t_img) + feature_distillation_loss(txt, t_txt))
    assert feat.total.item() == pytest.approx(0.5 * ccl.item() + 0.5 * fdis.item(), rel=1e-12)

    none = cvlp_loss(img, txt, labels, 20.0, distill="none", beta=0.5)
    assert none.total.item() == pytest.approx(ccl.item(), rel=1e-12) and none.dis.item() == 0.0


def test_cvlp_loss_rejects_bad_arguments(batch) -> None:
    img, txt, labels = batch
    assert DISTILL_TYPES == ("logits", "feature", "none")
    with pytest.raises(ValueError, match="distill"):
        cvlp_loss(img, txt, labels, 20.0, distill="feat")
    with pytest.raises(ValueError, match="teacher"):
        cvlp_loss(img, txt, labels, 20.0, distill="logits")
    with pytest.raises(ValueError, match="beta"):
        cvlp_loss(img, txt, labels, 20.0, distill="none", beta=1.5)
