import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ToyTask
from ltrbench.config import TrainConfig
from ltrbench.data.samplers import ClassAwareSampler, InstanceSampler, SqrtSampler
from ltrbench.train import fit, lr_schedule


def g(t, lr0, T, W, lr_min=0.0):
    """The schedule of docs/algorithms.md#cosine-schedule, written independently."""
    if t < W:
        return 1e-6 + t * (lr0 - 1e-6) / W
    return lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * t / T))


def test_official_schedule_epoch0_initial_then_g_of_e_minus_1():
    cfg = TrainConfig(epochs=10, lr=5e-5, warmup_epochs=5)
    got = lr_schedule(cfg)
    want = [1e-6] + [g(e - 1, 5e-5, 10, 5) for e in range(1, 10)]
    assert got == pytest.approx(want, rel=1e-6)
    cfg0 = TrainConfig(epochs=4, lr=1e-3, warmup_epochs=0)
    assert lr_schedule(cfg0) == pytest.approx([1e-3] + [g(e - 1, 1e-3, 4, 0) for e in range(1, 4)])


def test_decoupling_schedule_last_epoch_runs_at_zero():
    cfg = TrainConfig(epochs=10, lr=0.2, schedule_shift=1, optimizer="sgd")
    got = lr_schedule(cfg)
    assert got == pytest.approx([0.2 * (1 + math.cos(math.pi * e / 10)) / 2 for e in range(1, 11)], abs=1e-9)
    assert got[-1] == pytest.approx(0.0, abs=1e-12)


_Task = ToyTask


def _loader(seed=0):
    g_ = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g_)
    y = torch.randint(0, 3, (64,), generator=g_)
    return DataLoader(TensorDataset(x, y), batch_size=16, sampler=InstanceSampler(y.numpy(), seed))


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(epochs=4, lr=0.05, warmup_epochs=1)
    torch.manual_seed(0)
    full = nn.Linear(5, 3)
    init = {k: v.clone() for k, v in full.state_dict().items()}
    fit(_Task(full), _loader(), cfg, tmp_path / "a", device=torch.device("cpu"), seed=1, progress=False)

    part = nn.Linear(5, 3)
    part.load_state_dict(init)

    class Stop(Exception):
        pass

    def crash(epoch, row):
        assert row["epoch"] == epoch + 1 and set(row) >= {"loss", "lr"}
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(_Task(part), _loader(), cfg, tmp_path / "b", device=torch.device("cpu"), seed=1, progress=False,
            on_epoch=crash)
    resumed = nn.Linear(5, 3)
    res = fit(_Task(resumed), _loader(), cfg, tmp_path / "b", device=torch.device("cpu"), seed=1, progress=False)
    assert res.resumed_from == 2
    for k in init:
        assert torch.allclose(full.state_dict()[k], resumed.state_dict()[k], atol=1e-6)


def test_weight_decay_skips_biases_and_1d_but_not_0d():
    from ltrbench.train import split_weight_decay

    named = [("w", nn.Parameter(torch.zeros(2, 2))), ("b.bias", nn.Parameter(torch.zeros(2))),
             ("ln.weight", nn.Parameter(torch.zeros(2))), ("logit_scale", nn.Parameter(torch.tensor(1.0)))]
    groups = split_weight_decay(named, 0.05)
    decayed = {id(p) for grp in groups if grp["weight_decay"] > 0 for p in grp["params"]}
    assert decayed == {id(named[0][1]), id(named[3][1])}


def test_sqrt_sampler_draws_classes_in_proportion_to_sqrt_counts():
    labels = np.repeat([0, 1, 2], [400, 100, 25])
    s = SqrtSampler(labels, seed=0)
    draws = np.concatenate([labels[(s.set_epoch(e), s.indices())[1]] for e in range(20)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    want = np.sqrt([400, 100, 25]) / np.sqrt([400, 100, 25]).sum()
    assert freq == pytest.approx(want, abs=0.02)


def test_samplers_reseed_every_epoch_and_are_deterministic():
    labels = np.repeat(np.arange(5), [50, 20, 10, 5, 2])
    for cls in (InstanceSampler, SqrtSampler, ClassAwareSampler):
        a, b = cls(labels, seed=3), cls(labels, seed=3)
        a.set_epoch(0)
        b.set_epoch(0)
        e0 = a.indices()
        assert np.array_equal(e0, b.indices())
        a.set_epoch(1)
        assert not np.array_equal(e0, a.indices()), cls.__name__
        assert len(e0) == len(labels)


def test_class_aware_sampler_yields_blocks_of_four_per_class():
    labels = np.repeat(np.arange(4), [40, 10, 3, 1])
    s = ClassAwareSampler(labels, seed=0, samples_per_class=4)
    idx = s.indices()
    blocks = labels[idx[: (len(idx) // 4) * 4]].reshape(-1, 4)
    assert (blocks == blocks[:, :1]).all()
    first_pass = blocks[:4, 0]
    assert sorted(first_pass.tolist()) == [0, 1, 2, 3]  # every class once per pass


def _visits(labels, idx, per_class=4):
    """The class of every visit (block of ``per_class`` draws; a cut last block is a visit too)."""
    return [int(labels[idx[i]]) for i in range(0, len(idx), per_class)]


def test_class_aware_sampler_carries_its_cycles_over_epochs():
    # 5 classes, 85 draws an epoch: 21.25 visits, so an epoch ends in the middle of a pass over
    # the classes. The decoupling code's cycle iterators outlive the epoch: the next epoch finishes that pass.
    labels = np.repeat(np.arange(5), [50, 20, 10, 3, 2])
    s = ClassAwareSampler(labels, seed=0)
    visits = []
    for e in range(8):
        s.set_epoch(e)
        visits += _visits(labels, s.indices())
    passes = [visits[i:i + 5] for i in range(0, len(visits) - 4, 5)]
    assert all(sorted(p) == [0, 1, 2, 3, 4] for p in passes)
    counts = np.bincount(visits, minlength=5)
    assert counts.max() - counts.min() <= 1  # every class visited equally often over training


def test_class_aware_sampler_cycles_each_class_over_epochs():
    # Class 0's 50 images are drawn 4 per visit; over epochs every image comes once per its pass.
    labels = np.repeat(np.arange(3), [50, 8, 4])
    s = ClassAwareSampler(labels, seed=1)
    drawn = []
    for e in range(6):
        s.set_epoch(e)
        idx = s.indices()
        drawn += [int(i) for i in idx[: (len(idx) // 4) * 4] if labels[i] == 0]
    first = drawn[:50]
    assert sorted(first) == list(range(50))  # the first pass over class 0 spans epochs


def test_class_aware_sampler_replays_any_epoch_alone():
    """Resumable: a fresh sampler (a resumed run) gives epoch k's draws without epochs 0..k-1 drawn."""
    labels = np.repeat(np.arange(6), [40, 17, 9, 5, 3, 1])
    seq = ClassAwareSampler(labels, seed=7)
    want = []
    for e in range(5):
        seq.set_epoch(e)
        want.append(seq.indices())
    for k in (4, 1, 3):
        fresh = ClassAwareSampler(labels, seed=7)
        fresh.set_epoch(k)
        assert np.array_equal(fresh.indices(), want[k])
    seq.set_epoch(2)  # going back replays from epoch 0
    assert np.array_equal(seq.indices(), want[2])


def test_only_a_revised_sampler_enters_a_stage_key():
    from ltrbench.data.samplers import sampler_key

    assert sampler_key("class_aware") == {"sampler_revision": 2}
    assert sampler_key("sqrt") == {} and sampler_key("instance") == {}


@pytest.mark.parametrize("spelling, stored, mode", [("bf16", True, "bf16"), ("true", True, "bf16"), ("on", True, "bf16"),
                                                    ("off", False, "off"), ("false", False, "off"),
                                                    ("fp16", "fp16", "fp16")])
def test_amp_spellings_keep_the_first_stored_form(spelling, stored, mode):
    """bf16 is stored as true and off as false, so the stage keys of earlier runs stay."""
    from ltrbench.config import load_config

    t = load_config("synthetic_lt", overrides=[f"baseline.train.amp={spelling}"]).baseline.train
    assert t.amp == stored and t.amp_mode == mode
    assert TrainConfig().amp is True  # the default is serialised as before


def test_bad_amp_is_a_clear_error():
    from ltrbench.config import load_config
    from ltrbench.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline.train.amp must be true or false or one of bf16, fp16, off, got 'fp32'"):
        load_config("synthetic_lt", overrides=["baseline.train.amp=fp32"])
    with pytest.raises(ConfigError, match="train.amp must be bf16, fp16 or off"):
        TrainConfig(amp="half")


def test_amp_is_off_on_a_cpu_and_recorded(tmp_path):
    torch.manual_seed(0)
    res = fit(_Task(nn.Linear(5, 3)), _loader(), TrainConfig(epochs=1, lr=0.05, amp="fp16"), tmp_path,
              device=torch.device("cpu"), seed=0, progress=False)
    assert res.info["amp"] == "off"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda_and_resumes_with_its_scaler(tmp_path, amp):
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Linear(5, 3).to(dev)
    res = fit(_Task(model), _loader(), TrainConfig(epochs=2, lr=0.05, amp=amp), tmp_path, device=dev, seed=0,
              progress=False)
    assert res.info["amp"] == amp and res.history[-1]["loss"] < res.history[0]["loss"] + 1.0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert (state["scaler"] is not None) == (amp == "fp16")


class _ValTask(_Task):
    """Best-epoch selection on a fixed score sequence (as cRT's val accuracy)."""

    def __init__(self, module, scores):
        super().__init__(module)
        self.scores = list(scores)

    def validate(self):
        return self.scores.pop(0)


@pytest.mark.parametrize("damage", ["evil_last", "evil_best", "truncated_last", "foreign_last"])
def test_a_resume_checkpoint_that_does_not_load_is_discarded_and_training_restarts(tmp_path, caplog, damage):
    """A planted or broken last.pt/best.pt never runs code (weights_only) and never half-applies: the
    loop warns, discards it and trains from epoch 1, to the same weights as an uninterrupted run."""
    from conftest import write_evil_pickle

    cfg = TrainConfig(epochs=3, lr=0.05, select_best=True)
    scores = [0.5, 0.9, 0.7]
    torch.manual_seed(0)
    init = nn.Linear(5, 3).state_dict()

    def model():
        m = nn.Linear(5, 3)
        m.load_state_dict(init)
        return m

    full = model()
    fit(_ValTask(full, scores), _loader(), cfg, tmp_path / "a", device=torch.device("cpu"), seed=1, progress=False)

    class Stop(Exception):
        pass

    def crash(epoch, row):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(_ValTask(model(), scores), _loader(), cfg, tmp_path / "b", device=torch.device("cpu"), seed=1,
            progress=False, on_epoch=crash)
    ckpt = tmp_path / "b"
    assert (ckpt / "last.pt").is_file() and (ckpt / "best.pt").is_file()
    marker = tmp_path / "PWNED"
    if damage == "evil_last":
        write_evil_pickle(ckpt / "last.pt", marker, wrap="module")
    elif damage == "evil_best":
        write_evil_pickle(ckpt / "best.pt", marker, wrap="weight")
    elif damage == "truncated_last":
        (ckpt / "last.pt").write_bytes((ckpt / "last.pt").read_bytes()[:100])
    else:  # a checkpoint of another model: loads, but does not fit
        state = torch.load(ckpt / "last.pt", weights_only=True)
        state["module"] = nn.Linear(5, 4).state_dict()
        torch.save(state, ckpt / "last.pt")
    again = model()
    with caplog.at_level("WARNING", logger="ltrbench.train"):
        res = fit(_ValTask(again, scores), _loader(), cfg, ckpt, device=torch.device("cpu"), seed=1, progress=False)
    assert not marker.exists()
    assert res.resumed_from is None and [h["epoch"] for h in res.history] == [1, 2, 3] and res.best_epoch == 2
    assert any("discarded" in r.getMessage() and str(ckpt) in r.getMessage() for r in caplog.records)
    for k in init:
        assert torch.allclose(full.state_dict()[k], again.state_dict()[k], atol=1e-6)


def test_a_best_pt_planted_before_a_fresh_start_is_never_loaded(tmp_path):
    """No last.pt: training starts afresh, so a best.pt already there is not ours. Here no epoch
    scores (validate gives None), so nothing overwrites it: it must be dropped, not loaded at the end."""
    from conftest import write_evil_pickle

    cfg = TrainConfig(epochs=2, lr=0.05, select_best=True)
    torch.manual_seed(0)
    init = nn.Linear(5, 3).state_dict()
    ref, planted = nn.Linear(5, 3), nn.Linear(5, 3)
    ref.load_state_dict(init)
    planted.load_state_dict(init)
    fit(_ValTask(ref, [None, None]), _loader(), cfg, tmp_path / "a", device=torch.device("cpu"), seed=1, progress=False)
    (tmp_path / "b").mkdir()
    marker = tmp_path / "PWNED"
    write_evil_pickle(tmp_path / "b" / "best.pt", marker, wrap="weight")
    fit(_ValTask(planted, [None, None]), _loader(), cfg, tmp_path / "b", device=torch.device("cpu"), seed=1,
        progress=False)
    assert not marker.exists()
    assert all(torch.equal(ref.state_dict()[k], planted.state_dict()[k]) for k in init)
