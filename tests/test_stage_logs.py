"""What a stage leaves for people to look at: TensorBoard events beside every training stage (loss,
learning rate, val accuracy per epoch) and a plain-text log.txt per stage, neither of which may
change a result, a key or what the console shows."""
from __future__ import annotations

import json
import logging
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ltrbench
from conftest import ToyTask
from ltrbench.config import TrainConfig
from ltrbench.execute import execute
from ltrbench.stages import EpochEvents, Stage, artifact_dir, read_info, stage_kind
from test_conformance import FAST


def read_events(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TensorBoard event file under ``folder``: tag → [(step, value), ...].

    Event files are TFRecords (length, crc, payload, crc) of ``Event`` protos; tensorboardX ships the
    proto classes, so no TensorBoard install is needed to read them back."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(Path(folder).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@stage_kind("test_train_logs", version="1")
def _train_logs(ctx):
    logging.getLogger("ltrbench.tests").info("an info line of the stage")
    logging.getLogger("ltrbench.tests").warning("a warning of the stage")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    cfg = TrainConfig(epochs=3, lr=0.1, batch_size=8, warmup_epochs=0, select_best=ctx.config["validates"])
    res = ctx.train(ToyTask(nn.Linear(4, 3), 50.0 if ctx.config["validates"] else None), DataLoader(data, batch_size=8), cfg,
                    device=torch.device("cpu"), seed=0)
    return res.info


@pytest.mark.parametrize("validates", [False, True])
def test_a_training_stage_leaves_events_and_a_log(tmp_path, validates):
    s = Stage("test_train_logs", {"validates": validates}, label="toy/seed0")
    execute([s], tmp_path, progress=False)
    folder = artifact_dir(tmp_path, s)
    history = read_info(tmp_path, s)["history"]
    events = read_events(folder / "tb" / "toy_seed0")
    assert events["train/loss"] == [(h["epoch"], pytest.approx(h["loss"])) for h in history]
    assert events["train/lr"] == [(h["epoch"], pytest.approx(h["lr"])) for h in history]
    assert ("val/acc" in events) == validates
    if validates:
        assert events["val/acc"] == [(1, 50.0), (2, 50.0), (3, 50.0)]
    log = (folder / "log.txt").read_text()
    assert "an info line of the stage" in log and "a warning of the stage" in log
    assert "test_train_logs[toy/seed0]: computing" in log and "done in" in log
    assert [f"epoch {e}/3" in log for e in (1, 2, 3)] == [True] * 3
    assert not (folder / "work").exists()  # resume checkpoints went with the stage's scratch space


def test_the_stage_log_leaves_the_console_as_it_was(tmp_path):
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    root = logging.getLogger()
    keep, old = Keep(), root.level
    root.addHandler(keep)
    root.setLevel(logging.WARNING)
    try:
        execute([Stage("test_train_logs", {"validates": False, "n": 2})], tmp_path, progress=False)
    finally:
        root.removeHandler(keep)
        root.setLevel(old)
    mine = [r for r in seen if r.name.startswith("ltrbench")]
    assert [r.getMessage() for r in mine] == ["a warning of the stage"]  # INFO went to log.txt only
    lib = logging.getLogger("ltrbench")
    assert lib.propagate and lib.level == logging.NOTSET and not lib.handlers


def test_writing_events_draws_no_random_number(tmp_path):
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    with EpochEvents(tmp_path / "tb") as ev:
        for e in range(3):
            ev.epoch(e, {"epoch": e + 1, "loss": 1.0 / (e + 1), "lr": 0.1, "val_acc": None})
    assert random.getstate() == before[0]
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert torch.equal(torch.get_rng_state(), before[2])
    assert read_events(tmp_path / "tb")["train/loss"] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]


def test_training_stages_of_the_built_in_run_leave_tensorboard_events():
    df = ltrbench.run(ltrbench.Request(["baseline", "crt"], "synthetic_lt", overrides=FAST))
    from ltrbench.paths import cache_root

    cache = cache_root()
    trained = [s for rec in df.records for s in rec["stages"] if s["kind"] in ("finetune", "head")]
    assert {s["label"] for s in trained} == {"baseline", "stage1", "crt/seed0"}
    for s in trained:
        folder = cache / s["kind"] / s["key"]
        events = read_events(folder / "tb")
        info = folder / ("head.json" if s["kind"] == "head" else "stage.json")  # a head's history: head.json
        history = json.loads(info.read_text())["history"]
        assert [step for step, _ in events["train/loss"]] == [h["epoch"] for h in history], s["label"]
        assert (folder / "log.txt").is_file()
    crt = [s for s in trained if s["label"] == "crt/seed0"][0]
    assert "val/acc" in read_events(cache / "head" / crt["key"] / "tb")  # cRT selects its epoch on val
