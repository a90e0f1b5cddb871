"""Samplers: instance-balanced, square-root and class-aware, each reseeded every epoch.

* ``instance``: a random permutation of the training set (instance-balanced).
* ``sqrt``: VL-LTR's ``weight_sample`` + ``use_sqrt_freq`` (docs/algorithms.md#square-root-sampler): every sample has
  weight n_y^(-1/2), so class c is drawn with probability ∝ √n_c; N indices with replacement.
  The official single-process run repeats one sequence every epoch (its ``set_epoch`` is only
  called under DDP); here the generator is reseeded from (seed, epoch) every epoch.
* ``class_aware``: the decoupling code's sampler (docs/algorithms.md#class-aware-sampler): classes visited in a random
  cyclic order, reshuffled after each pass; each visit yields ``samples_per_class`` images from
  that class's own cyclic, reshuffled list. N indices per epoch. As in the decoupling code (whose cycle iterators
  live as long as the sampler), the class cycle and every class's cycle carry over from one
  epoch to the next, so over training every class is visited equally often (±1).

A sampler whose draws changed after results were cached has a revision (:data:`REVISIONS`), which
the engine adds to the key of every stage whose config names it (``"sampler": name``, at any
depth: :mod:`ltrbench.stages`; :func:`sampler_key` is the old per-stage form).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ..errors import ConfigError

SAMPLERS = ("instance", "sqrt", "class_aware")

#: The revision of each sampler's draws that changed after results were first cached (absent:
#: revision 1, the first). 2 = ``class_aware`` carries its cycles over epochs (issue 13, D7).
REVISIONS = {"class_aware": 2}


def sampler_key(sampler: str) -> dict[str, int]:
    """What a training stage adds to its key for ``sampler``: ``{"sampler_revision": n}`` for a
    sampler revised since results were first cached, else nothing (so every other key, and the
    result it seeds, stays as it was, while a revised sampler's stale artifacts are not reused)."""
    rev = REVISIONS.get(sampler)
    return {"sampler_revision": rev} if rev else {}


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


@dataclass
class _Cycles:
    """The class-aware sampler's state between two draws: its generator, the rest of the current
    pass over the classes, and the rest of each class's current pass over its images."""

    rng: np.random.Generator
    class_queue: list[int]
    pools: dict[int, list[int]]


class ClassAwareSampler(EpochSampler):
    """The decoupling code's ClassAwareSampler, deterministic and resumable: epoch e's indices are a function of
    (seed, e) alone. The cycles of epoch e continue where epoch e - 1 left them, so the sampler
    replays the draws from epoch 0 (keeping the state where the last draw ended, so consecutive
    epochs cost one epoch each, and a run resumed at epoch k replays k epochs once). Epoch 0 is
    drawn exactly as the first revision drew every epoch.

    The decoupling code's DataLoader workers prefetch a few batches past the last step of an epoch,
    which its sampler then skips; here an epoch consumes exactly N indices.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, samples_per_class: int = 4) -> None:
        super().__init__(labels, seed)
        self.per_class = int(samples_per_class)
        self.by_class = [np.flatnonzero(self.labels == c) for c in range(int(self.labels.max()) + 1)]
        self.classes = [c for c, idx in enumerate(self.by_class) if len(idx)]
        self._resume: tuple[int, _Cycles] | None = None  # (epoch, the state at its start)
        self._last: tuple[int, np.ndarray] | None = None  # the last epoch drawn and its indices

    def _initial(self) -> _Cycles:
        rng = np.random.default_rng([self.seed, 0, 0x5A17])  # the first revision's epoch-0 generator
        return _Cycles(rng, [], {c: [] for c in self.classes})

    def _draw(self, st: _Cycles) -> np.ndarray:
        """One epoch (N indices) from state ``st``, which is advanced in place."""
        out: list[int] = []
        n = len(self.labels)
        while len(out) < n:
            if not st.class_queue:
                st.class_queue = list(st.rng.permutation(self.classes))
            c = st.class_queue.pop()
            pool = st.pools[c]
            for _ in range(self.per_class):
                if not pool:
                    pool.extend(st.rng.permutation(self.by_class[c]).tolist())
                out.append(pool.pop())
        # A visit cut at the end of an epoch is not finished later: the next epoch opens with a
        # new visit (the decoupling code's generator restarts its block of 4), its images' cycle going on.
        return np.asarray(out[:n], dtype=np.int64)

    def indices(self) -> np.ndarray:
        if self._last is not None and self._last[0] == self.epoch:
            return self._last[1].copy()
        if self._resume is not None and self._resume[0] <= self.epoch:
            start, st = self._resume[0], copy.deepcopy(self._resume[1])
        else:
            start, st = 0, self._initial()
        for _ in range(start, self.epoch):
            self._draw(st)
        out = self._draw(st)
        self._resume = (self.epoch + 1, st)
        self._last = (self.epoch, out)
        return out.copy()


def build_sampler(kind: str, labels: np.ndarray, seed: int, samples_per_class: int = 4) -> EpochSampler:
    if kind == "instance":
        return InstanceSampler(labels, seed)
    if kind == "sqrt":
        return SqrtSampler(labels, seed)
    if kind == "class_aware":
        return ClassAwareSampler(labels, seed, samples_per_class)
    raise ConfigError(f"Unknown sampler {kind!r}; use one of {', '.join(SAMPLERS)}.")
