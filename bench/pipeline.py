#!/usr/bin/env python
"""Input-pipeline rates: images/s of one loader worker for the official transforms, side by side.

    python bench/pipeline.py [--root DIR --dataset NAME | --short-side 256] [--images 200] [--repeats 5]
                             [--workers 1] [--target-rate 1000,3000,10000]

One loader worker is one process decoding JPEGs and running the transform on one CPU thread, so
its rate is measured here in this process on one thread, in images per second of CPU time (what a
worker with a core to itself does), over the same images for every variant, the variants
interleaved (A B C D A B C D …) and the medians compared, so machine noise hits them alike:

* ``decode``: PIL open + RGB conversion only;
* ``train (float32)``: decode + the official training transform as the loaders run it
  (RandomResizedCrop 224 bicubic, flip, RandAugment m9-mstd0.5, ToTensor, CLIP normalisation,
  RandomErasing 0.25: ltrbench.data.transforms);
* ``train (uint8)``: the same augmentation up to the crop's uint8 tensor, normalisation and
  random erasing left to the device (timm's ``use_prefetcher`` split);
* ``eval (float32)``: decode + bicubic resize to 256 + centre crop 224 + normalisation.

Then the real loader (ltrbench.data.loaders: ImageListDataset, the machine's DataLoader settings)
with ``--workers`` workers over the same images, batch 64: the rate a stage sees, collation and
inter-process copies included (wall time: on a shared machine this one is noisy). Finally the workers each ``--target-rate`` (images/s a GPU step
consumes) needs at the measured per-worker rates.

Images: a generated root's training images (``--root``, ``bench/genroot.py``), or ``--images``
new JPEGs of shorter side ``--short-side`` (real ImageNet and iNat photos are larger than
Places365's 256-px ones: ``--short-side 400`` or ``600`` shows what decoding those costs).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from timm.data import create_transform
from torch.utils.data import DataLoader

from ltrbench.backbones import CLIP_MEAN, CLIP_STD
from ltrbench.data.images import ImageListDataset, open_rgb
from ltrbench.data.loaders import loader_settings, worker_count
from ltrbench.data.transforms import _zero_bit_posterize, eval_transform, train_transform
from ltrbench.registry import DATASETS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genroot import write_jpeg  # noqa: E402

SIZE, RESIZE = 224, 256


def uint8_train_transform() -> Callable:
    """The official augmentation ending in the crop's uint8 tensor (timm's prefetcher split)."""
    return _zero_bit_posterize(create_transform(
        input_size=SIZE, is_training=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5,
        auto_augment="rand-m9-mstd0.5-inc1", interpolation="bicubic", re_prob=0.25, re_mode="pixel", re_count=1,
        mean=CLIP_MEAN, std=CLIP_STD, use_prefetcher=True))


def root_images(root: Path, dataset: str, n: int) -> list[tuple[str, int]]:
    """The first ``n`` training images of a data root (spread over its list)."""
    pairs = DATASETS.get(dataset)().load(Path(root)).split("train")
    step = max(1, len(pairs) // n)
    return list(pairs[::step][:n])


def new_images(folder: Path, n: int, short_side: int) -> list[tuple[str, int]]:
    items = [(f"img{i:05d}.jpg", i % 50) for i in range(n)]
    for rel, lab in items:
        write_jpeg(folder / rel, lab, seed=0, short_side=short_side)
    return items


def _rate(fn: Callable[[Path], object], paths: list[Path]) -> float:
    """Images per second of this process's CPU time: what a worker with a core of its own achieves
    (wall time would count the time other processes of a shared machine hold the core)."""
    t = time.process_time()
    for p in paths:
        fn(p)
    return len(paths) / (time.process_time() - t)


def loader_rate(root: Path, items: list[tuple[str, int]], workers: int, batch: int = 64, rounds: int = 3) -> float:
    """Images/s of the real loader (train transform, ``workers`` workers), after its first batch."""
    ds = ImageListDataset(root, items, train_transform("official", SIZE, RESIZE, CLIP_MEAN, CLIP_STD))
    batch = max(1, min(batch, len(items) // 4))  # a few batches per round even from few images
    dl = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, **loader_settings(workers, persistent=True))
    n, t = 0, None
    for _ in range(rounds):
        for x, _ in dl:
            if t is None:  # workers started, first batch in: time the steady state
                t = time.perf_counter()
                continue
            n += len(x)
    return n / (time.perf_counter() - t) if n else float("nan")


def measure_rates(root: Path, dataset: str | None = None, *, images: int = 200, repeats: int = 5,
                  workers: int | None = None, items: list[tuple[str, int]] | None = None) -> dict[str, object]:
    """Per-worker images/s of each variant (median over interleaved repeats) and the real loader's."""
    items = items if items is not None else root_images(root, dataset, images)
    paths = [Path(root) / rel for rel, _ in items]
    off = train_transform("official", SIZE, RESIZE, CLIP_MEAN, CLIP_STD)
    u8 = uint8_train_transform()
    ev = eval_transform(SIZE, RESIZE, CLIP_MEAN, CLIP_STD)
    variants: dict[str, Callable[[Path], object]] = {
        "decode": open_rgb,
        "train (float32)": lambda p: off(open_rgb(p)),
        "train (uint8)": lambda p: u8(open_rgb(p)),
        "eval (float32)": lambda p: ev(open_rgb(p)),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    try:
        torch.manual_seed(0)
        for fn in variants.values():  # warm-up: imports, first allocations
            fn(paths[0])
        samples: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                samples[name].append(_rate(fn, paths))
    finally:
        torch.set_num_threads(threads)
    sizes = [p.stat().st_size for p in paths]
    w = worker_count(workers)
    out: dict[str, object] = {
        "images": len(paths), "repeats": repeats, "kb_median": statistics.median(sizes) / 1024,
        "rates": {k: statistics.median(v) for k, v in samples.items()},
        "spread": {k: (min(v), max(v)) for k, v in samples.items()},
        "loader_workers": w,
    }
    if w:
        out["loader"] = loader_rate(Path(root), items, w)
    return out


def print_rates(res: dict[str, object], targets: list[float]) -> None:
    rates: dict[str, float] = res["rates"]  # type: ignore[assignment]
    spread = res["spread"]
    print(f"{res['images']} JPEGs (median {res['kb_median']:.0f} KB), median of {res['repeats']} interleaved "
          f"repeats, one thread, per second of CPU time")
    print("\n| per worker | images/s | ms/image | range (images/s) |")
    print("|---|---|---|---|")
    for name, r in rates.items():
        lo, hi = spread[name]  # type: ignore[index]
        print(f"| {name} | {r:.0f} | {1000 / r:.2f} | {lo:.0f}–{hi:.0f} |")
    dec, tr, tr8 = rates["decode"], rates["train (float32)"], rates["train (uint8)"]
    print(f"\ndecoding is {100 * (1 / dec) / (1 / tr):.0f} % of the training transform's time per image; the uint8 "
          f"split saves {100 * (1 - tr / tr8):.0f} % of it")
    if "loader" in res:
        print(f"real loader, {res['loader_workers']} worker(s): {res['loader']:.0f} images/s "
              f"({res['loader'] / res['loader_workers']:.0f} per worker)")
    if targets:
        print("\n| GPU step rate (images/s) | workers: train (float32) | train (uint8) | eval |")
        print("|---|---|---|---|")
        for t in targets:
            print(f"| {t:,.0f} | {math.ceil(t / tr)} | {math.ceil(t / tr8)} | {math.ceil(t / rates['eval (float32)'])} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, help="a generated (or real) data root; else new JPEGs in a temp folder")
    ap.add_argument("--dataset", default="places_lt")
    ap.add_argument("--short-side", type=int, default=256, help="new JPEGs only")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None, help="real-loader workers (default: from the machine)")
    ap.add_argument("--target-rate", default="1000,3000,10000")
    args = ap.parse_args()
    targets = [float(t) for t in args.target_rate.split(",") if t.strip()]
    if args.root:
        res = measure_rates(args.root, args.dataset, images=args.images, repeats=args.repeats, workers=args.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            items = new_images(Path(tmp), args.images, args.short_side)
            res = measure_rates(Path(tmp), images=args.images, repeats=args.repeats, workers=args.workers, items=items)
    print_rates(res, targets)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
