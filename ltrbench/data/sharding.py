"""One data-parallel worker's part of a training loader: the rank's slice of every global batch.

Worker ``rank`` of ``world`` draws the whole epoch's order from the same sampler as the single
process (every sampler is an :class:`~ltrbench.data.samplers.EpochSampler`, a function of its seed
and the epoch), cuts it into the single process's global batches and keeps the rank's contiguous
slice of each, so the N workers' batches together are the single-process batches, in order, for
the same seed: instance, square-root and class-aware sampling alike, and every loader built on
them (finetune's, CVLP's, LGR's through the encoder, the heads' on cached features).

The built-in world's whole-batch augmentation (:class:`~ltrbench.data.batched.BatchLoader`) draws
its crop and flip for the whole global batch on every worker and applies the rank's slice, so the
augmented images are the single process's too. The per-image transforms of a DataLoader (the
official timm recipe on real data) draw in the worker that loads the image, as in every DDP run:
the same images, other augmentation draws.

A global batch whose size does not split evenly over the workers is an error, raised by
:func:`shard_loader` before the first step (``train.batch_size`` itself is checked against
``train.devices`` before any work, :mod:`ltrbench.validate`; this catches a data set smaller than
one batch).
"""
from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError
from .batched import BatchLoader


def batch_sizes(n: int, batch_size: int, drop_last: bool) -> list[int]:
    """The sizes of an epoch's global batches over ``n`` indices."""
    full, rest = divmod(n, batch_size)
    return [batch_size] * full + ([rest] if rest and not drop_last else [])


def check_split(n: int, batch_size: int, drop_last: bool, world: int, what: str = "the training loader") -> None:
    """Raise :class:`ConfigError` unless every global batch of the epoch splits evenly over ``world``."""
    uneven = sorted({b for b in batch_sizes(n, batch_size, drop_last) if b % world})
    if uneven:
        raise ConfigError(f"{what} has global batches of {', '.join(map(str, uneven))} images, which do not split "
                          f"evenly over train.devices={world} workers; choose a batch size (and, for a data set "
                          f"smaller than one batch, a data set size) divisible by {world}.")


class ShardIndices(Sampler[int]):
    """The indices of rank ``rank``'s slice of every global batch of ``base`` (of ``batch_size``,
    the last incomplete one dropped with ``drop_last``), batch after batch."""

    def __init__(self, base: Sampler[int], batch_size: int, drop_last: bool, rank: int, world: int) -> None:
        self.base, self.batch_size, self.drop_last = base, int(batch_size), bool(drop_last)
        self.rank, self.world = int(rank), int(world)
        check_split(len(base), self.batch_size, self.drop_last, self.world)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return sum(b // self.world for b in batch_sizes(len(self.base), self.batch_size, self.drop_last))

    def __iter__(self) -> Iterator[int]:
        order = np.asarray(list(iter(self.base)), dtype=np.int64)
        for start, size in zip(range(0, len(order), self.batch_size),
                               batch_sizes(len(order), self.batch_size, self.drop_last)):
            part = size // self.world
            lo = start + self.rank * part
            yield from order[lo : lo + part].tolist()


class ShardBatches(Sampler[Any]):
    """The rank's slice of every batch that ``base`` yields (a sampler of whole index batches, as
    the heads' feature loader has, :func:`ltrbench.head_fit.feature_loader`)."""

    def __init__(self, base: Sampler[Any], rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, int(rank), int(world)
        size, drop = getattr(base, "batch_size", None), getattr(base, "drop_last", None)
        inner = getattr(base, "sampler", None)
        if size is not None and drop is not None and inner is not None:
            check_split(len(inner), size, drop, self.world)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.base:
            if len(batch) % self.world:
                raise ConfigError(f"a global batch of {len(batch)} does not split evenly over train.devices={self.world}")
            part = len(batch) // self.world
            yield batch[self.rank * part : (self.rank + 1) * part]


def _loader_kwargs(loader: DataLoader) -> dict[str, Any]:
    """How ``loader`` loads (workers, pinning, collation), to rebuild it over another sampler."""
    kw: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                          "pin_memory": loader.pin_memory, "timeout": loader.timeout,
                          "worker_init_fn": loader.worker_init_fn, "generator": loader.generator}
    if loader.num_workers:
        kw.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    return kw


def shard_loader(loader: Any, rank: int, world: int) -> Any:
    """Worker ``rank``'s part of training loader ``loader`` (module docstring): a
    :class:`BatchLoader`, a DataLoader over an index sampler, or a DataLoader over a sampler of
    whole batches (``batch_size=None``). The loader itself is not iterated; ``world`` 1 returns it."""
    if world <= 1:
        return loader
    if isinstance(loader, BatchLoader):
        if loader.sampler is None:
            raise ConfigError("a training BatchLoader without a sampler cannot be sharded")
        if loader.batch_size % world:
            check_split(loader.batch_size, loader.batch_size, False, world)
        out = copy.copy(loader)
        out.sampler = ShardIndices(loader.sampler, loader.batch_size, loader.drop_last, rank, world)
        out.batch_size = loader.batch_size // world
        out.drop_last = False  # the global batches are cut already
        out.shard = (rank, world)
        return out
    if isinstance(loader, DataLoader):
        if loader.batch_size is None:  # the sampler yields whole batches
            return DataLoader(loader.dataset, sampler=ShardBatches(loader.sampler, rank, world), batch_size=None,
                              **_loader_kwargs(loader))
        size = loader.batch_size
        if size % world:
            check_split(size, size, False, world)
        return DataLoader(loader.dataset, batch_size=size // world,
                          sampler=ShardIndices(loader.sampler, size, loader.drop_last, rank, world), drop_last=False,
                          **_loader_kwargs(loader))
    raise ConfigError(f"a training loader of type {type(loader).__name__} cannot be split over data-parallel "
                      "workers (a BatchLoader or a torch DataLoader with a sampler can).")
