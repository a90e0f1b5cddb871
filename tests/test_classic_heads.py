"""The classic heads on cached features (crt, ncm, tau_norm, lws, knn, fc): conformance on synthetic
long-tailed features, the shared stage-1 model of the four decoupled heads, and one CLI run."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import ltrbench
from conftest import TINY, run_cli, tiny_set
from ltrbench.config import from_dict
from ltrbench.head_fit import HeadData, HeadEnv, head_methods

HEADS = sorted(head_methods())
DECOUPLED = ["crt", "ncm", "tau_norm", "lws"]


def test_every_classic_head_is_registered():
    assert {"crt", "ncm", "tau_norm", "lws", "knn", "fc"} <= set(HEADS)


# --------------------------------------------------------------------------- conformance


def long_tailed_features(num_classes: int = 10, dim: int = 32, seed: int = 0) -> HeadData:
    """Gaussian class clusters, 200 → 5 training samples per class, balanced val/eval, a stage-1
    classifier biased towards the head classes, and 12 noisy "sentences" per class."""
    g = torch.Generator().manual_seed(seed)
    centers = 2.5 * torch.randn(num_classes, dim, generator=g)
    counts = np.round(200 * (5 / 200) ** (np.arange(num_classes) / (num_classes - 1))).astype(int)

    def draw(per_class) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.from_numpy(np.repeat(np.arange(num_classes), per_class))
        return centers[y] + torch.randn(len(y), dim, generator=g), y

    train_x, train_y = draw(counts)
    val_x, val_y = draw(10)
    eval_x, eval_y = draw(20)
    text_x, text_y = draw(12)
    prior = torch.from_numpy(counts / counts.sum()).float()
    return HeadData(num_classes=num_classes, eval_x=eval_x, eval_y=eval_y, train_x=train_x, train_y=train_y,
                    val_x=val_x, val_y=val_y, weight=0.5 * centers, bias=2.0 * prior.log(), text_x=text_x,
                    text_y=text_y)


def small_config(cls: type):
    """The method's defaults, with a training recipe shrunk to a few epochs of small batches."""
    cfg = cls()
    train = getattr(cfg, "train", None)
    if train is None:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(train, epochs=min(train.epochs, 4), batch_size=64,
                                                              ref_batch_size=None))


@pytest.mark.parametrize("name", HEADS)
def test_head_fits_synthetic_long_tailed_features(name, tmp_path):
    method = head_methods()[name]()
    data = long_tailed_features()
    cfg = small_config(method.config_cls)
    assert from_dict(method.config_cls, dataclasses.asdict(cfg)) == cfg  # the head stage's round trip
    fit = method.fit_head(data, cfg, HeadEnv(tmp_path, seed=0))
    assert tuple(fit.logits.shape) == (len(data.eval_y), data.num_classes)
    assert torch.isfinite(fit.logits).all()
    acc = float((fit.logits.argmax(1) == data.eval_y).float().mean())
    assert acc > 3 / data.num_classes, f"{name}: accuracy {acc:.2f} is not above chance"
    json.dumps(fit.info, default=float)  # what it chose must be recordable


def test_tau_norm_records_tau_and_sweep(tmp_path):
    fit = head_methods()["tau_norm"]().fit_head(long_tailed_features(), small_config(
        head_methods()["tau_norm"].config_cls), HeadEnv(tmp_path))
    assert fit.info["tau"] in [round(0.1 * i, 1) for i in range(21)]
    assert len(fit.info["sweep"]) == 21


# --------------------------------------------------------------------------- sharing


def test_decoupled_heads_share_one_stage1_finetune_and_features():
    finetunes, features = set(), {}
    for s in ltrbench.plan(ltrbench.Request(DECOUPLED, "synthetic_lt", overrides=TINY)).stages:
        if s.kind == "finetune":
            finetunes.add(s.key)
        elif s.kind == "features":
            features.setdefault(s.config.split, set()).add(s.key)
    assert len(finetunes) == 1
    assert set(features) == {"train", "val", "test"}
    assert all(len(keys) == 1 for keys in features.values()), features


# --------------------------------------------------------------------------- end to end


def test_knn_and_fc_read_the_chosen_encoder():
    from ltrbench.planner import topological

    for encoder in ("cvlp", "clip"):
        sets = [*TINY, f"knn.encoder={encoder}", f"fc.encoder={encoder}"]
        for p in ltrbench.plan(ltrbench.Request(["knn", "fc"], "synthetic_lt", overrides=sets)).runs:
            model = next(s for s in topological([p.target]) if s.kind == "features").named_inputs()["model"]
            assert model.kind == ("cvlp" if encoder == "cvlp" else "clip_weights")


def _fast_heads() -> list[str]:
    # knn/fc on the raw CLIP weights here: their CVLP encoder is trained and tested by test_vlltr.py
    # (Table 4 rows 5 and 6), and test_knn_and_fc_read_the_chosen_encoder checks the wiring.
    return tiny_set(["stage1.train.epochs=1", "stage1.train.batch_size=64", "crt.train.epochs=2",
                     "crt.train.batch_size=32", "lws.train.epochs=2", "lws.train.batch_size=32", "fc.train.epochs=2",
                     "fc.train.batch_size=32", "knn.encoder=clip", "fc.encoder=clip"])


@pytest.mark.slow
def test_cli_runs_six_heads_on_one_stage1_model(tmp_path):
    out = tmp_path / "out"
    r = run_cli("--methods", "crt,ncm,tau_norm,lws,knn,fc", "--out", str(out), *_fast_heads(),
                env={"TQDM_DISABLE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    for conv in ("paper convention", "decoupling convention"):
        table = r.stdout.split(conv, 1)[1].split("###", 1)[0]
        assert sum(f"| {m} " in table for m in ("crt", "ncm", "tau_norm", "lws", "knn", "fc")) == 6
    # The inline executor prints one line per executed stage: the stage-1 model is trained once at
    # most (not at all where an earlier test of the session cached it: the tests share one cache).
    assert sum(line.startswith("· finetune[stage1]") for line in r.stdout.splitlines()) <= 1
    runs = {json.loads(f.read_text())["method"]: json.loads(f.read_text()) for f in (out / "runs").glob("*.json")}
    assert set(runs) == {"crt", "ncm", "tau_norm", "lws", "knn", "fc"}
    stage1 = {s["key"] for m in DECOUPLED for s in runs[m]["stages"] if s["kind"] == "finetune"}
    assert len(stage1) == 1
    assert 0.0 <= runs["tau_norm"]["info"]["tau"] <= 2.0 and len(runs["tau_norm"]["info"]["sweep"]) == 21
    assert runs["crt"]["info"]["best_epoch"] in (1, 2)
