"""Samplers: instance-balanced, square-root and class-aware, each reseeded every epoch.

* ``instance``: a random permutation of the training set (instance-balanced).
* ``sqrt``: VL-LTR's ``weight_sample`` + ``use_sqrt_freq`` (ALGORITHMS.md §1): every sample has
  weight n_y^(-1/2), so class c is drawn with probability ∝ √n_c; N indices with replacement.
  The official single-process run repeats one sequence every epoch (its ``set_epoch`` is only
  called under DDP); here the generator is reseeded from (seed, epoch) every epoch.
* ``class_aware``: the decoupling code's sampler (ALGORITHMS.md §5): classes visited in a random
  cyclic order, reshuffled after each pass; each visit yields ``samples_per_class`` images from
  that class's own cyclic, reshuffled list. N indices per epoch.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError

SAMPLERS = ("instance", "sqrt", "class_aware")


class EpochSampler(Sampler[int]):
    """Base: ``set_epoch(e)`` reseeds; ``len`` is the number of indices per epoch."""

    def __init__(self, labels: np.ndarray, seed: int = 0) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, 0x5A17])

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())


class InstanceSampler(EpochSampler):
    def indices(self) -> np.ndarray:
        return self._rng().permutation(len(self.labels))


class SqrtSampler(EpochSampler):
    def indices(self) -> np.ndarray:
        counts = np.bincount(self.labels)
        w = 1.0 / np.sqrt(counts[self.labels].astype(np.float64))
        g = torch.Generator().manual_seed(int(self._rng().integers(2**62)))
        idx = torch.multinomial(torch.from_numpy(w), len(self.labels), replacement=True, generator=g)
        return idx.numpy()


class ClassAwareSampler(EpochSampler):
    def __init__(self, labels: np.ndarray, seed: int = 0, samples_per_class: int = 4) -> None:
        super().__init__(labels, seed)
        self.per_class = int(samples_per_class)
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(int(self.labels.max()) + 1)]

    def indices(self) -> np.ndarray:
        rng = self._rng()
        classes = [c for c, idx in enumerate(self.by_class) if len(idx)]
        class_queue: list[int] = []
        pools = {c: [] for c in classes}
        out: list[int] = []
        n = len(self.labels)
        while len(out) < n:
            if not class_queue:
                class_queue = list(rng.permutation(classes))
            c = class_queue.pop()
            for _ in range(self.per_class):
                if not pools[c]:
                    pools[c] = list(rng.permutation(self.by_class[c]))
                out.append(int(pools[c].pop()))
        return np.asarray(out[:n], dtype=np.int64)


def build_sampler(kind: str, labels: np.ndarray, seed: int, samples_per_class: int = 4) -> EpochSampler:
    if kind == "instance":
        return InstanceSampler(labels, seed)
    if kind == "sqrt":
        return SqrtSampler(labels, seed)
    if kind == "class_aware":
        return ClassAwareSampler(labels, seed, samples_per_class)
    raise ConfigError(f"Unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}.")
