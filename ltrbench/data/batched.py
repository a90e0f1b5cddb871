"""Whole-batch loading for data sets held in memory (the built-in world): no per-image PIL work.

For small images the per-image PIL transforms of a DataLoader cost more than the model itself,
so a preloaded data set (``LTDataset.extra['preload']`` or ``data.preload``) with the ``light`` or
``none`` augmentation is served by :class:`BatchLoader`: it gathers a batch of uint8 images by
index and augments the whole batch at once with one affine ``grid_sample`` (random resized crop,
area 0.6–1, aspect 3/4–4/3, and horizontal flip: the ``light`` recipe of ltrbench.data.transforms).
Random draws come from torch's global generator, which the training loop seeds, so runs are
deterministic. The ``official`` recipe (RandAugment, RandomErasing) keeps the per-image path.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler


def random_resized_crop_flip(x: torch.Tensor, scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), flip: float = 0.5,
                             part: tuple[int, int] | None = None) -> torch.Tensor:
    """Per-sample random resized crop + horizontal flip of a float batch (B×3×H×W), same output size.

    ``part`` = (offset, total): ``x`` is rows offset … offset+B of a global batch of ``total``
    (a data-parallel worker's slice, :mod:`ltrbench.data.sharding`); the crops of all ``total``
    images are drawn and this slice's applied, so the draws are the single process's.
    """
    b = x.shape[0]
    offset, total = part if part is not None else (0, b)
    crop = _draw_crops(total, scale, ratio, flip)[offset : offset + b]
    grid = F.affine_grid(crop, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _draw_crops(b: int, scale, ratio, flip: float) -> torch.Tensor:
    """The affine matrices (b×2×3) of ``b`` random resized crops with flips, from torch's generator."""
    area = torch.empty(b).uniform_(*scale)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    sx = torch.sqrt(area * r).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / r).clamp(max=1.0)
    tx = (torch.rand(b) * 2 - 1) * (1 - sx)
    ty = (torch.rand(b) * 2 - 1) * (1 - sy)
    sign = torch.where(torch.rand(b) < flip, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx * sign
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sy
    theta[:, 1, 2] = ty
    return theta


def resize_center_crop(x: torch.Tensor, resize: int, size: int) -> torch.Tensor:
    """The evaluation transform on a batch: short side to ``resize`` (bicubic), centre crop ``size``."""
    h, w = x.shape[-2:]
    if min(h, w) != resize:
        s = resize / min(h, w)
        x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bicubic", align_corners=False)
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


class BatchLoader:
    """Iterates (images, targets) batches from uint8 arrays in memory; ``sampler`` as a DataLoader's."""

    def __init__(
        self,
        images: np.ndarray,  # N×H×W×3 uint8
        targets: torch.Tensor,
        *,
        batch_size: int,
        sampler: Sampler | None = None,
        augment: str = "none",
        image_size: int,
        eval_resize: int,
        mean: Sequence[float],
        std: Sequence[float],
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.targets = targets
        self.batch_size = batch_size
        self.sampler = sampler
        self.augment = augment
        self.image_size, self.eval_resize = image_size, eval_resize
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.drop_last = drop_last
        #: (rank, world) of a data-parallel worker's loader (ltrbench.data.sharding.shard_loader)
        self.shard: tuple[int, int] = (0, 1)

    def _order(self) -> np.ndarray:
        return np.asarray(list(iter(self.sampler))) if self.sampler is not None else np.arange(len(self.images))

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        stop = (len(order) // self.batch_size) * self.batch_size if self.drop_last else len(order)
        for i in range(0, stop, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = torch.from_numpy(self.images[idx]).permute(0, 3, 1, 2).float().div_(255.0)
            if self.augment == "light":
                if x.shape[-1] != self.image_size:
                    x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
                rank, world = self.shard
                x = random_resized_crop_flip(x, part=(rank * len(idx), world * len(idx)))
            else:
                x = resize_center_crop(x, self.eval_resize, self.image_size)
            yield (x - self.mean) / self.std, self.targets[torch.from_numpy(idx)]
