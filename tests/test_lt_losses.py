"""The long-tail losses of ltrbench.losses against independent numpy re-implementations of each
official code's math (docs/algorithms.md#long-tail-losses), on random logits, targets and long-tailed counts.

Each reference below is written from the official file named in its docstring (read at the commit
docs/algorithms.md#long-tail-losses gives), in float64 numpy, without calling ltrbench; the functions under test run in
float64 torch, so the two agree to 1e-6 or one of them is wrong.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltrbench import losses as L
from ltrbench.registry import LOSSES

TOL = 1e-6


def _case(seed: int, B: int = 64, C: int = 20, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    counts = np.maximum(1, np.round(500 * 0.8 ** np.arange(C))).astype(np.int64)  # 500 … 9, long-tailed
    z = rng.normal(0, scale, (B, C))
    y = rng.integers(0, C, B)
    return z, y, counts


def _t(z, y):
    return torch.tensor(z, dtype=torch.float64), torch.tensor(y, dtype=torch.long)


def _log_softmax(z):
    m = z.max(1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(1, keepdims=True))


def _ce(z, y):  # per-row cross-entropy
    return -_log_softmax(z)[np.arange(len(y)), y]


def _logsumexp(a, axis):
    m = a.max(axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis, keepdims=True))).squeeze(axis)


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_official(seed, tau):
    """google-research/google-research ``logit_adjustment/utils.py``, ``build_loss_fn``:
    ``logits + log(base_probs**tau + 1e-12)`` then ``sparse_softmax_cross_entropy_with_logits``,
    ``reduce_mean``."""
    z, y, n = _case(seed)
    pi = n / n.sum()
    ref = _ce(z + np.log(pi ** tau + 1e-12), y).mean()
    got = L.logit_adjusted_loss(*_t(z, y), n, tau).item()
    assert abs(got - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_logit_adjusted_lift(seed):
    """shijxcs/LIFT ``utils/losses.py`` ``LogitAdjustedLoss`` (l. 84-95): ``logit + tau * log(n/Σn)``, CE."""
    z, y, n = _case(seed)
    ref = _ce(z + 0.7 * np.log(n / n.sum()), y).mean()
    assert abs(L.logit_adjusted_loss(*_t(z, y), n, 0.7, variant="LIFT").item() - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_posthoc_logit_adjustment(seed):
    """google-research ``logit_adjustment`` post-hoc mode: scores ``logits - log(base_probs**tau + 1e-12)``."""
    z, y, n = _case(seed)
    ref = z - np.log((n / n.sum()) ** 1.5 + 1e-12)
    got = L.posthoc_logit_adjustment(torch.tensor(z), n, 1.5).numpy()
    assert np.abs(got - ref).max() < TOL


def test_select_posthoc_tau_picks_the_best_on_val():
    z, y, n = _case(5, B=400, C=10)
    z = z + 4 * np.log(n / n.sum())  # a head-biased classifier: adjustment helps
    tau, acc = L.select_posthoc_tau(torch.tensor(z), torch.tensor(y), n)
    accs = {}
    for t in L.POSTHOC_TAUS:
        p = (z - np.log((n / n.sum()) ** t + 1e-12)).argmax(1)
        accs[t] = np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]) * 100
    assert acc == pytest.approx(max(accs.values())) and accs[tau] == pytest.approx(acc) and tau > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_balanced_softmax_official(seed):
    """jiawei-ren/BalancedMetaSoftmax-Classification ``loss/BalancedSoftmaxLoss.py``
    ``balanced_softmax_loss`` (l. 37-51): ``logits + sample_per_class.log()``, CE mean. LIFT's
    ``BalancedSoftmaxLoss`` (log π) is the same loss: compared too."""
    z, y, n = _case(seed)
    ref = _ce(z + np.log(n), y).mean()
    lift = _ce(z + np.log(n / n.sum()), y).mean()
    got = L.balanced_softmax_loss(*_t(z, y), n).item()
    assert abs(got - ref) < TOL and abs(got - lift) < TOL


def _ldam_margins(n, max_m):
    m = 1.0 / np.sqrt(np.sqrt(n))
    return m * (max_m / m.max())


def _weighted_ce_mean(z, y, w):  # PyTorch's weighted reduction: Σ w_y CE / Σ w_y
    return (w[y] * _ce(z, y)).sum() / w[y].sum()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_ldam_official(seed, weighted):
    """kaidic/LDAM-DRW ``losses.py`` ``LDAMLoss`` (l. 23-45): m = n^(-1/4) scaled to max_m; x_m = x − m_y
    at the true class; ``cross_entropy(s * output, target, weight)``; the DRW weights of
    ``cifar_train.py`` l. 199-206 (β 0.9999, Σw = C)."""
    z, y, n = _case(seed, scale=0.3)  # cosines
    m = _ldam_margins(n, 0.5)
    out = z.copy()
    out[np.arange(len(y)), y] -= m[y]
    w = None
    if weighted:
        w = (1 - 0.9999) / (1 - np.power(0.9999, n))
        w = w / w.sum() * len(n)
    ref = _ce(30 * out, y).mean() if w is None else _weighted_ce_mean(30 * out, y, w)
    got = L.ldam_loss(*_t(z, y), n, 0.5, 30.0, None if w is None else torch.tensor(w)).item()
    assert abs(got - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_ldam_lift(seed):
    """shijxcs/LIFT ``utils/losses.py`` ``LDAMLoss`` (l. 25-44): ``logit - batch_m * s`` at the true
    class (the logit already scaled), CE mean, no weight."""
    z, y, n = _case(seed, scale=8.0)
    m = _ldam_margins(n, 0.5)
    out = z.copy()
    out[np.arange(len(y)), y] -= 25 * m[y]
    ref = _ce(out, y).mean()
    assert abs(L.ldam_loss(*_t(z, y), n, 0.5, 25.0, variant="LIFT").item() - ref) < TOL


def test_ldam_drw_switches_its_weights_on_at_the_deferred_epoch():
    """The registered ``ldam`` factory: unweighted before epoch ⌊0.8·E⌋, CB-weighted from it on
    (kaidic/LDAM-DRW ``cifar_train.py`` l. 199-206: ``idx = epoch // 160``, betas [0, 0.9999])."""
    z, y, n = _case(3, scale=0.3)
    zt, yt = _t(z, y)
    loss = LOSSES.get("ldam")(n)
    w = L.class_balanced_weights(n, 0.9999)
    for epoch, weighted in [(0, False), (7, False), (8, True), (9, True)]:
        loss.set_epoch(epoch, 10)
        want = L.ldam_loss(zt, yt, n, weight=w if weighted else None).item()
        assert loss(zt, yt).item() == pytest.approx(want, abs=1e-6)
    assert L.ldam_loss(zt, yt, n).item() != pytest.approx(L.ldam_loss(zt, yt, n, weight=w).item(), abs=1e-3)
    no_drw = LOSSES.get("ldam")(n, drw=False)
    no_drw.set_epoch(9, 10)
    assert no_drw(zt, yt).item() == pytest.approx(L.ldam_loss(zt, yt, n).item(), abs=1e-9)


def test_the_training_loop_tells_the_loss_its_epoch(tmp_path):
    """One loop: ``fit`` calls ``task.set_epoch`` each epoch; ClassifierTask passes it to the loss."""
    from ltrbench.config import TrainConfig
    from ltrbench.stage_kinds import ClassifierTask
    from ltrbench.train import fit

    seen = []

    class Recorder:
        def set_epoch(self, epoch, epochs):
            seen.append((epoch, epochs))

        def __call__(self, z, y):
            return torch.nn.functional.cross_entropy(z, y)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Identity()
            self.head = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.head(x)

    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=4, ref_batch_size=4, warmup_epochs=0)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])),
                                       batch_size=4)
    fit(ClassifierTask(Tiny(), cfg, Recorder()), data, cfg, tmp_path, device=torch.device("cpu"), seed=0,
        progress=False)
    assert seen == [(0, 3), (1, 3), (2, 3)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal(seed, gamma):
    """kaidic/LDAM-DRW ``losses.py`` ``focal_loss``/``FocalLoss`` (l. 7-21), as LIFT's (γ 2): per-row
    (weighted) CE, p = exp(−CE), mean((1 − p)^γ · CE)."""
    z, y, n = _case(seed)
    w = np.linspace(0.5, 2.0, len(n))
    for weight in (None, w):
        ce = _ce(z, y) if weight is None else weight[y] * _ce(z, y)
        ref = ((1 - np.exp(-ce)) ** gamma * ce).mean()
        got = L.focal_loss(*_t(z, y), gamma, None if weight is None else torch.tensor(weight)).item()
        assert abs(got - ref) < TOL


def _cb_weights(n, beta):
    w = (1.0 - beta) / (1.0 - np.power(beta, n))
    return w / np.sum(w) * len(n)


@pytest.mark.parametrize("beta", [0.9, 0.999, 0.9999])
def test_class_balanced_weights(beta):
    """richardaecn/class-balanced-loss ``src/cifar_main.py`` (the weights in ``cifar_main``: effective_num
    = 1 − β^n, w = (1 − β)/effective_num, w / Σw · C) and LIFT's ``ClassBalancedLoss`` (l. 47-52: w / mean w)."""
    n = _case(0)[2]
    got = L.class_balanced_weights(n, beta).numpy()
    assert np.abs(got - _cb_weights(n, beta)).max() < TOL
    lift = (1 - beta) / (1 - beta ** n.astype(float))
    assert np.abs(got - lift / lift.mean()).max() < TOL


def _sigmoid_bce(z, t):  # tf.nn.sigmoid_cross_entropy_with_logits: max(z,0) − z·t + log(1 + e^−|z|)
    return np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_type", ["softmax", "sigmoid", "sigmoid_focal"])
def test_class_balanced_official(seed, loss_type):
    """richardaecn/class-balanced-loss ``src/cifar_main.py`` ``_tower_fn`` (softmax: tf.losses.softmax_cross_entropy
    with per-example weights w_y, SUM_BY_NONZERO_WEIGHTS = mean over the batch; sigmoid: Σ w·BCE / Σ labels)
    and ``focal_loss`` (modulator exp(−γ·y·z − γ·log1p(exp(−z))), Σ / Σ labels)."""
    z, y, n = _case(seed)
    beta, gamma = 0.999, 0.5
    w = _cb_weights(n, beta)
    onehot = np.eye(len(n))[y]
    if loss_type == "softmax":
        ref = (w[y] * _ce(z, y)).sum() / np.count_nonzero(w[y])
    else:
        bce = _sigmoid_bce(z, onehot)
        if loss_type == "sigmoid_focal":
            bce = np.exp(-gamma * onehot * z - gamma * np.log1p(np.exp(-z))) * bce
        ref = (w[y][:, None] * bce).sum() / onehot.sum()
    got = L.class_balanced_loss(*_t(z, y), n, beta, loss_type, gamma).item()
    assert abs(got - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_class_balanced_lift(seed):
    """shijxcs/LIFT ``utils/losses.py`` ``ClassBalancedLoss`` (l. 47-56): ``cross_entropy(weight=w)``
    with β 0.9999 (PyTorch divides by Σ w_y, not B)."""
    z, y, n = _case(seed)
    w = (1 - 0.9999) / (1 - 0.9999 ** n.astype(float))
    ref = _weighted_ce_mean(z, y, w / w.mean())
    assert abs(L.class_balanced_loss(*_t(z, y), n, variant="LIFT").item() - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [1.0, 1.2])
def test_grw(seed, p):
    """Megvii-BaseDetection/DisAlign ``instance_seg/.../roi_heads/fast_rcnn.py`` ``_init_weights``
    (l. 40-60: ratio = n/Σn, 1/ratio^p, / Σ · C) with ``F.cross_entropy(weight=..., reduction='mean')``
    (l. 73-76); LIFT's ``GeneralizedReweightLoss`` (l. 59-69: / mean) is the same for p = 1."""
    z, y, n = _case(seed)
    ratio = n / n.sum()
    w = 1 / ratio ** p
    w = w / w.sum() * len(n)
    assert np.abs(L.grw_weights(n, p).numpy() - w).max() < TOL
    ref = _weighted_ce_mean(z, y, w)
    assert abs(L.grw_loss(*_t(z, y), n, p).item() - ref) < TOL


def _lade_reference(z, y, n, lam, wgt, ce_eps):
    """hyperconnect/LADE ``loss/LADELoss.py`` (l. 29-53) + ``loss/PriorCELoss.py`` (``x + log(prior + 1e-9)``)."""
    C, N = z.shape[1], z.shape[0]
    prior = n / n.sum()
    member = (y[None, :] == np.arange(C)[:, None])
    per_cls_pred_spread = z.T * member
    pred_spread = (z - np.log(prior + 1e-9) + np.log(1.0 / C + 1e-9)).T
    num = member.sum(-1).astype(float)
    first = per_cls_pred_spread.sum(-1) / (num + 1e-8)
    second = _logsumexp(pred_spread, -1) - np.log(N)
    estim = -np.sum((first - second - lam * second ** 2) * prior)
    ce = _ce(z + np.log(prior + ce_eps), y).mean()
    return ce + wgt * estim


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("lam,wgt", [(0.1, 0.1), (0.5, 0.05)])
def test_lade_official(seed, lam, wgt):
    """hyperconnect/LADE: ``PriorCELoss`` (weight 1) + ``LADELoss`` (weight ``estim_loss_weight``) as its
    configs combine them (``config/ImageNet_LT/lade.yaml``: λ 0.1, weight 0.1; iNat 0.5, 0.05)."""
    z, y, n = _case(seed)
    ref = _lade_reference(z, y, n, lam, wgt, 1e-9)
    assert abs(L.lade_loss(*_t(z, y), n, lam, wgt).item() - ref) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_lade_lift(seed):
    """shijxcs/LIFT ``utils/losses.py`` ``LADELoss`` (l. 98-132): CE(logit + log prior) without 1e-9."""
    z, y, n = _case(seed)
    ref = _lade_reference(z, y, n, 0.1, 0.1, 0.0)
    assert abs(L.lade_loss(*_t(z, y), n, variant="LIFT").item() - ref) < TOL


def test_registered_losses_build_and_differ():
    z, y, n = _case(4)
    zt, yt = _t(z, y)
    vals = {}
    for name in ("ce", "logit_adjusted", "balanced_softmax", "ldam", "class_balanced", "softmax_focal",
                 "generalized_reweight", "lade_loss"):
        fn = LOSSES.get(name)(n)
        v = fn(zt, yt)
        assert torch.isfinite(v)
        vals[name] = round(v.item(), 6)
    assert vals["logit_adjusted"] == pytest.approx(vals["balanced_softmax"], abs=1e-6)  # LA τ = 1 is BS
    del vals["balanced_softmax"]
    assert len(set(vals.values())) == len(vals), vals


def test_bad_variant_is_refused():
    z, y, n = _case(0)
    with pytest.raises(ValueError, match="variant"):
        L.logit_adjusted_loss(*_t(z, y), n, variant="paper")
    with pytest.raises(ValueError, match="softmax form only"):
        L.class_balanced_loss(*_t(z, y), n, loss_type="sigmoid_focal", variant="LIFT")
