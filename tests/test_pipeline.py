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
