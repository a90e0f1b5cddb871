"""The real-data input pipeline: the official training transform at full strength, and the
DataLoader settings taken from the machine."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment

from ltrbench.backbones import CLIP_MEAN, CLIP_STD
from ltrbench.data.transforms import train_transform


def _posterize_op(tf):
    (ra,) = [t for t in tf.transforms if isinstance(t, auto_augment.RandAugment)]
    (op,) = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    return op


def test_randaugment_posterize_at_magnitude_10_gives_a_black_image_not_an_error():
    """rand-m9-mstd0.5 draws magnitude 10 (0 bits kept) for ~2 % of its ops: Pillow 13 raises on
    0 bits, the official code's Pillow returned a black image; the harness does the latter."""
    tf = train_transform("official", 224, 256, CLIP_MEAN, CLIP_STD)
    op = _posterize_op(tf)
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    out = op(img)
    assert out.size == img.size and not np.asarray(out).any()
    op.magnitude = 5  # 2 bits kept: the ordinary posterize
    kept = np.asarray(op(img))
    assert (kept & 0b00111111 == 0).all() and kept.any()


@pytest.mark.parametrize("cpus, gpus, want", [(2, 0, 1), (1, 0, 0), (16, 1, 15), (64, 1, 16), (33, 4, 7), (8, 8, 0)])
def test_loader_workers_come_from_the_machine(monkeypatch, cpus, gpus, want):
    from ltrbench.data import loaders

    monkeypatch.setattr(loaders.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(loaders, "machine_gpus", lambda: gpus)
    assert loaders.worker_count(None) == want  # one stage per GPU shares the CPUs, less its own process
    assert loaders.worker_count(3) == 3  # data.num_workers wins


def test_loader_settings_keep_workers_and_pin_memory_only_where_they_apply(monkeypatch):
    from ltrbench.data.loaders import loader_settings

    assert loader_settings(0, persistent=True) == {"num_workers": 0, "pin_memory": torch.cuda.is_available()}
    kw = loader_settings(2, persistent=True)
    assert kw["persistent_workers"] and kw["prefetch_factor"] == 2 and kw["num_workers"] == 2
    assert not loader_settings(2, persistent=False)["persistent_workers"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader_settings(0, persistent=False)["pin_memory"]  # batches go to a GPU: pinned, async copies
