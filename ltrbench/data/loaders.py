"""Dataset references (what a stage key holds) and DataLoaders over a dataset split.

A :class:`DatasetRef` is the picklable handle that travels inside stages: the plugin name, its
load options and the content fingerprint are part of stage keys; the data root is not (it may
differ between machines of a cluster). :func:`open_dataset` re-reads the dataset in whatever
process runs the stage, once per process.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Subset

from ..config import BenchConfig
from ..registry import BACKBONES, DATASETS
from .base import LTDataset
from .batched import BatchLoader
from .images import ImageListDataset, note_replacements
from .samplers import build_sampler
from .transforms import eval_transform, train_transform


@dataclass(frozen=True)
class DatasetRef:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    root: str | None = None

    def key(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "fingerprint": self.fingerprint}

    @classmethod
    def from_key(cls, key: Mapping[str, Any], root: str | None) -> "DatasetRef":
        return cls(key["name"], dict(key.get("options", {})), key.get("fingerprint", ""), root)


def resolve_dataset(name: str, cfg: BenchConfig, *, progress: bool = False) -> tuple[DatasetRef, LTDataset]:
    """Load ``name`` with the config's root and options; return its ref and the dataset."""
    plugin = DATASETS.get(name)()
    # A plugin may derive load options from the config (the built-in world: which world).
    options = plugin.options(cfg) if hasattr(plugin, "options") else {}
    ds = _open(name, str(plugin.resolve_root(cfg.data.root)), json.dumps(options, sort_keys=True), progress)
    return DatasetRef(name, options, ds.fingerprint(), cfg.data.root), ds


def open_dataset(ref: DatasetRef) -> LTDataset:
    """The dataset of a stage, read in whatever process runs it (its root resolved there)."""
    plugin = DATASETS.get(ref.name)()
    return _open(ref.name, str(plugin.resolve_root(ref.root)), json.dumps(dict(ref.options), sort_keys=True), False)


_OPENED: dict[tuple[str, str, str], LTDataset] = {}


def _open(name: str, root: str, options_json: str, progress: bool) -> LTDataset:
    """Read a dataset once per process and resolved root (``progress`` is not part of what is read)."""
    key = (name, root, options_json)
    if key not in _OPENED:
        if len(_OPENED) >= 8:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[key] = DATASETS.get(name)().load(Path(root), progress=progress, **json.loads(options_json))
    return _OPENED[key]


@dataclass(frozen=True)
class ImageSettings:
    """How images are fed: resolved from the data config and the backbone."""

    image_size: int
    eval_resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str
    num_workers: int | None  # None: from the machine the stage runs on (worker_count)
    eval_batch_size: int
    preload: bool
    allow_corrupt: bool

    @classmethod
    def resolve(cls, cfg: BenchConfig, backbone: str) -> "ImageSettings":
        spec = BACKBONES.get(backbone)
        d = cfg.data
        return cls(
            image_size=d.image_size or spec.image_size,
            eval_resize=d.eval_resize or spec.eval_resize,
            mean=tuple(spec.mean),
            std=tuple(spec.std),
            augment=d.augment,
            num_workers=d.num_workers,
            eval_batch_size=d.eval_batch_size,
            preload=d.preload,
            allow_corrupt=d.allow_corrupt,
        )

    def key(self) -> dict[str, Any]:
        """The part that changes what the model sees (workers and batch size for eval do not)."""
        return {"image_size": self.image_size, "eval_resize": self.eval_resize, "augment": self.augment,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImageSettings":
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def image_dataset(ds: LTDataset, split: str, img: ImageSettings, train: bool) -> ImageListDataset:
    tf = (
        train_transform(img.augment, img.image_size, img.eval_resize, img.mean, img.std)
        if train
        else eval_transform(img.image_size, img.eval_resize, img.mean, img.std)
    )
    preload = img.preload or bool(ds.extra.get("preload", False))
    key = (ds.name, str(ds.root), split, len(ds.split(split)), preload, img.allow_corrupt)
    if key not in _DECODED:
        if len(_DECODED) >= 16:
            _DECODED.pop(next(iter(_DECODED)))
        _DECODED[key] = _Shared(ImageListDataset(ds.root, ds.split(split), None, preload, img.allow_corrupt))
    note_replacements(_DECODED[key].base)  # every stage that reads a replaced image records it
    return _DECODED[key].with_transform(tf)


_DECODED: dict[tuple, "_Shared"] = {}


class _Shared:
    """One decoded image list shared by loaders with different transforms (train and eval)."""

    def __init__(self, base: ImageListDataset) -> None:
        self.base = base
        self._stacked: np.ndarray | None = None

    def stacked(self) -> np.ndarray | None:
        """All images as one N×H×W×3 uint8 array when preloaded and of one size, else None."""
        cache = self.base._cache
        if cache is None or not cache or len({a.shape for a in cache}) != 1:
            return None
        if self._stacked is None:
            self._stacked = np.stack(cache)
        return self._stacked

    def with_transform(self, tf) -> ImageListDataset:
        view = ImageListDataset.__new__(ImageListDataset)
        view.__dict__.update(self.base.__dict__)
        view.transform = tf
        return view


def _batched(ds: LTDataset, split: str, img: ImageSettings, augment: str) -> np.ndarray | None:
    """The in-memory images of a split when the whole-batch path applies (ltrbench.data.batched)."""
    if augment not in ("light", "none"):
        return None
    image_dataset(ds, split, img, train=False)  # decodes and caches the split
    preload = img.preload or bool(ds.extra.get("preload", False))
    key = (ds.name, str(ds.root), split, len(ds.split(split)), preload, img.allow_corrupt)
    return _DECODED[key].stacked() if preload else None


def train_loader(
    ds: LTDataset, img: ImageSettings, *, sampler: str, batch_size: int, seed: int, samples_per_class: int = 4,
    split: str = "train", indices: np.ndarray | None = None, drop_last: bool | None = None,
):
    """Batches of ``split`` (or of its items ``indices``) under the training transform, drawn by
    ``sampler``. ``drop_last`` (default: when there is more than one batch) drops the last
    incomplete batch."""
    labels = ds.labels(split)
    if indices is not None:
        labels = labels[indices]
    smp = build_sampler(sampler, labels, seed, samples_per_class)
    if drop_last is None:
        drop_last = len(labels) > batch_size
    images = _batched(ds, split, img, img.augment)
    if images is not None:
        if indices is not None:
            images = images[indices]
        return BatchLoader(images, torch.from_numpy(labels), batch_size=batch_size, sampler=smp, augment=img.augment,
                           image_size=img.image_size, eval_resize=img.eval_resize, mean=img.mean, std=img.std,
                           drop_last=drop_last)
    data = image_dataset(ds, split, img, train=True)
    if indices is not None:
        data = Subset(data, indices.tolist())
    # Workers outlive the epoch (no restart, and no re-fork of the decoded-image cache, per epoch).
    return DataLoader(data, batch_size=batch_size, sampler=smp, drop_last=drop_last,
                      **loader_settings(img.num_workers, persistent=True))


def eval_loader(ds: LTDataset, split: str, img: ImageSettings, indices: np.ndarray | None = None):
    images = _batched(ds, split, img, "none")
    if images is not None:
        labels = torch.from_numpy(ds.labels(split))
        if indices is not None:
            images, labels = images[indices], labels[torch.from_numpy(indices)]
        return BatchLoader(images, labels, batch_size=img.eval_batch_size, image_size=img.image_size,
                           eval_resize=img.eval_resize, mean=img.mean, std=img.std)
    data = image_dataset(ds, split, img, train=False)
    if indices is not None:
        data = Subset(data, indices.tolist())
    return DataLoader(data, batch_size=img.eval_batch_size, shuffle=False,
                      **loader_settings(img.num_workers, persistent=False))


class _Crops:
    """uint8 or [0, 1] images (…×3×H×W, already resized) → their centre crop or five crops of
    ``size``, normalised: …×K×3×S×S (a class, not a lambda: DataLoader workers pickle it)."""

    def __init__(self, size: int, crops: int, mean, std) -> None:
        self.size, self.crops = size, crops
        self.mean, self.std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div(255.0)
        s = [self.size, self.size]
        parts = TF.five_crop(x, s) if self.crops == 5 else (TF.center_crop(x, s),)
        return (torch.stack(parts, dim=-4) - self.mean) / self.std


def crops_loader(ds: LTDataset, split: str, img: ImageSettings, *, resize: int, crops: int, interpolation: str):
    """Batches (N×K×3×S×S images, labels) of ``split`` for test-time ensembling (LIFT): the short
    side resized to ``resize`` with ``interpolation`` (bilinear | bicubic), then the centre crop
    (``crops`` = 1) or the five crops (``crops`` = 5: corners and centre) of ``img.image_size``."""
    if crops not in (1, 5):
        raise ValueError(f"crops must be 1 or 5, got {crops}")
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    cut = _Crops(img.image_size, crops, img.mean, img.std)
    images = _batched(ds, split, img, "none")
    if images is not None:
        labels = torch.from_numpy(ds.labels(split))
        for i in range(0, len(images), img.eval_batch_size):
            x = torch.from_numpy(images[i : i + img.eval_batch_size]).permute(0, 3, 1, 2).float().div_(255.0)
            yield cut(TF.resize(x, [resize], interpolation=mode, antialias=True)), labels[i : i + img.eval_batch_size]
        return
    data = image_dataset(ds, split, img, train=False)
    data.transform = T.Compose([T.Resize(resize, interpolation=mode), T.PILToTensor(), cut])
    yield from DataLoader(data, batch_size=img.eval_batch_size, shuffle=False,
                          **loader_settings(img.num_workers, persistent=False))


#: The most loader workers :func:`worker_count` gives one stage.
MAX_WORKERS = 16


def machine_gpus() -> int:
    """GPUs on this machine, also those hidden from this process by CUDA_VISIBLE_DEVICES (a Ray
    task sees only its own, but shares the machine's CPUs with the other GPUs' stages)."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    if nvidia.is_dir():
        return sum(1 for _ in nvidia.iterdir())
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def worker_count(requested: int | None = None) -> int:
    """``data.num_workers`` when set; else from the machine: the CPUs this process may run on,
    shared by one stage per GPU, less one for the stage's own process, at most :data:`MAX_WORKERS`.

    The official training transform runs at 200–300 images/s per worker (bench/pipeline.py), so a
    GPU training at thousands of images per second wants as many as the machine can give it."""
    if requested is not None:
        return int(requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_stage = cpus // max(1, machine_gpus())
    return max(0, min(MAX_WORKERS, per_stage - 1))


def loader_settings(num_workers: int | None, *, persistent: bool) -> dict[str, Any]:
    """DataLoader keyword arguments for this machine: workers (:func:`worker_count`), pinned host
    memory when a GPU takes the batches (asynchronous copies), and with workers two batches in
    flight per worker (PyTorch's default prefetch: with 16 workers that is already 32 batches of
    host memory) kept alive across epochs when ``persistent``."""
    workers = worker_count(num_workers)
    kw: dict[str, Any] = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    if workers:
        kw.update(persistent_workers=persistent, prefetch_factor=2)
    return kw
