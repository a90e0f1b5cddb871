"""Image transforms, built with timm (docs/algorithms.md#augmentation-and-normalisation).

* ``official``: the VL-LTR training transform: RandomResizedCrop (scale 0.08–1, bicubic),
  horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``, RandomErasing (p 0.25, pixel mode).
* ``light``: RandomResizedCrop (scale 0.6–1) and flip; for the small built-in world, where an
  8 % crop of a 32-px image would erase the object.
* ``none``: the evaluation transform.
* ``crop_flip``: LIFT's RandomResizedCrop (scale 0.08–1, bilinear) and flip, nothing else;
  ``crop_bicubic``: LIFT+'s bicubic RandomResizedCrop without the flip (its epoch-dependent crop
  schedule is not implemented: the scale range stays 0.08–1).

Evaluation: bicubic resize of the short side to ``eval_resize``, centre crop ``image_size``.
Normalisation: the backbone's mean/std (CLIP's for every CLIP model).

RandAugment's ``PosterizeIncreasing`` keeps 4 - int(4 m / 10) bits, none at magnitude 10 (which
``mstd0.5`` draws for about 2 % of its ops); Pillow 13 refuses 0 bits with a ValueError, older
Pillow (the official code's) returned a black image. :func:`train_transform` puts that behaviour
back (:func:`posterize`), so the official recipe neither crashes nor changes.
"""
from __future__ import annotations

from typing import Callable, Sequence

from PIL import Image, ImageOps
from timm.data import create_transform
from timm.data import auto_augment

from ..errors import ConfigError

AUGMENTS = ("official", "light", "none", "crop_flip", "crop_bicubic")


def eval_transform(image_size: int, eval_resize: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    return create_transform(
        input_size=image_size,
        is_training=False,
        interpolation="bicubic",
        crop_pct=image_size / eval_resize,
        mean=tuple(mean),
        std=tuple(std),
    )


def train_transform(
    kind: str, image_size: int, eval_resize: int, mean: Sequence[float], std: Sequence[float]
) -> Callable:
    if kind == "none":
        return eval_transform(image_size, eval_resize, mean, std)
    if kind == "official":
        return _zero_bit_posterize(create_transform(
            input_size=image_size,
            is_training=True,
            scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3),
            hflip=0.5,
            auto_augment="rand-m9-mstd0.5-inc1",
            interpolation="bicubic",
            re_prob=0.25,
            re_mode="pixel",
            re_count=1,
            mean=tuple(mean),
            std=tuple(std),
        ))
    if kind == "light":
        return create_transform(
            input_size=image_size,
            is_training=True,
            scale=(0.6, 1.0),
            hflip=0.5,
            color_jitter=None,
            interpolation="bicubic",
            mean=tuple(mean),
            std=tuple(std),
        )
    if kind in ("crop_flip", "crop_bicubic"):
        return create_transform(
            input_size=image_size,
            is_training=True,
            scale=(0.08, 1.0),
            hflip=0.5 if kind == "crop_flip" else 0.0,
            color_jitter=None,
            interpolation="bilinear" if kind == "crop_flip" else "bicubic",
            mean=tuple(mean),
            std=tuple(std),
        )
    raise ConfigError(f"Unknown data.augment {kind!r}; use one of {', '.join(AUGMENTS)}.")


def posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize op, with 0 bits kept as the official code's Pillow did: a black image."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off
    return ImageOps.posterize(img, bits_to_keep)


def _zero_bit_posterize(tf: Callable) -> Callable:
    """``tf`` with every RandAugment posterize op running :func:`posterize` (module docstring)."""
    for t in getattr(tf, "transforms", ()):
        if isinstance(t, auto_augment.RandAugment):
            for op in t.ops:
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = posterize
    return tf
