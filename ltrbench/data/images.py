"""The generic image-list dataset: (relative path, label) pairs under a root, read with PIL.

Every data set (real and built-in) goes through this class. ``preload`` decodes all images once
into memory (used for the small built-in world, where per-epoch file reads would dominate).
An unreadable image is a :class:`~ltrbench.errors.DataError` naming the file, unless
``allow_corrupt`` is set: then it is replaced by the next readable image of the list and counted
in ``corrupt`` (reported in the result), never silently.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..errors import DataError

log = logging.getLogger(__name__)


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(
            f"Image {path} is listed but missing. Check the data root, or run "
            "`python run_bench.py check-data` to list every missing file."
        ) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"Image {path} cannot be read ({e}). Replace it, or set data.allow_corrupt=true to skip it.") from None


class ImageListDataset(Dataset):
    def __init__(
        self,
        root: Path,
        pairs: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        preload: bool = False,
        allow_corrupt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.paths = [p for p, _ in pairs]
        self.labels = np.asarray([lab for _, lab in pairs], dtype=np.int64)
        self.transform = transform
        self.allow_corrupt = allow_corrupt
        self.corrupt: set[int] = set()
        self._cache: list[np.ndarray] | None = None
        if preload:
            self._cache = [np.asarray(self._load(i)) for i in range(len(self.paths))]

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Image.Image:
        try:
            return open_rgb(self.root / self.paths[i])
        except DataError:
            if not self.allow_corrupt or len(self.corrupt) >= len(self.paths) - 1:
                raise
            if i not in self.corrupt:
                log.warning("skipping unreadable image %s (data.allow_corrupt=true)", self.root / self.paths[i])
                self.corrupt.add(i)
            return self._load((i + 1) % len(self.paths))

    def image(self, i: int) -> Image.Image:
        if self._cache is not None:
            return Image.fromarray(self._cache[i])
        return self._load(i)

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])
