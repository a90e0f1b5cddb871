#!/usr/bin/env python
"""Can the input pipeline feed the GPU? The training step on batches already on the device against
the same step fed by the real pipeline, and LGR's inference cost, in one table (bench/gpu_check.sh).

    python bench/gpu_check.py [--device cuda] [--archs RN50,ViT-B-16] [--size 224] [--batch 256]
                              [--steps 20] [--warmup 5] [--images 2048] [--workers N]

For each architecture (random weights, an open_clip image tower + a 1,000-class linear head, bf16
autocast on CUDA, channels_last for the ResNets, AdamW, cross-entropy: the step of
ltrbench.train.fit), at ``--size`` px:

* resident: ``--steps`` timed steps on one random batch already on the device: the GPU's rate;
* loader only: the real training loader (ltrbench.data.loaders.train_loader: ImageListDataset,
  the official timm transform, the square-root sampler, the machine's DataLoader settings) over
  ``--images`` generated JPEGs (bench/genroot.py), batches copied to the device, no step;
* fed: the step fed by that loader, as a training stage runs;

then fed / resident (1.0: the pipeline keeps up) and the LGR / linear per-image inference time
(bench/inference.py, batch ``--inference-batch``). Needs no internet: weights are random, images
generated. Runs on a CPU too (slowly; the test shrinks it with the flags above and the tiny
``scale-rn`` / ``scale-vit`` configs of bench/model_configs, a ModifiedResNet and a ViT).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

from ltrbench.backbones import CLIP_MEAN, CLIP_STD
from ltrbench.data.base import LTDataset
from ltrbench.data.loaders import ImageSettings, train_loader, worker_count
from ltrbench.models import Classifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genroot import write_images  # noqa: E402
from inference import measure as inference_rows  # noqa: E402

CLASSES = 1000
open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")  # scale-rn, scale-vit


def make_model(arch: str, size: int, dev: torch.device) -> tuple[torch.nn.Module, bool]:
    torch.manual_seed(0)
    clip = open_clip.create_model(arch, pretrained=None, force_image_size=size)
    visual = clip.visual
    with torch.no_grad():
        dim = visual(torch.zeros(1, 3, size, size)).shape[1]
    model = Classifier(visual, dim, CLASSES).to(dev)
    channels_last = not hasattr(visual, "transformer")  # ResNets: convolutions run faster on NHWC tensor cores
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, channels_last


class Step:
    """One training step as ltrbench.train.fit takes it (bf16 autocast on CUDA)."""

    def __init__(self, model: torch.nn.Module, dev: torch.device, channels_last: bool) -> None:
        self.model, self.dev, self.cl = model.train(), dev, channels_last
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(self.dev, non_blocking=True)
        if self.cl:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(self.dev, non_blocking=True)
        with torch.autocast(device_type=self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda"):
            loss = F.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(batches, fn, steps: int, warmup: int, dev: torch.device) -> float:
    """Images/s of ``fn`` over ``steps`` batches after ``warmup`` ones (the first includes worker start)."""
    it = iter(batches)
    for _ in range(warmup):
        fn(*next(it))
    _sync(dev)
    t, n = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        fn(x, y)
        n += len(x)
    _sync(dev)
    return n / (time.perf_counter() - t)


def _n(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2f}"


def endless(loader):
    """Batches of ``loader`` epoch after epoch (the sampler reseeded per epoch, workers kept)."""
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)
        yield from loader


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--archs", default="RN50,ViT-B-16")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--images", type=int, default=2048, help="generated JPEGs the loader cycles over")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: from the machine)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes generating the JPEGs")
    ap.add_argument("--inference-batch", type=int, default=64)
    ap.add_argument("--inference-repeats", type=int, default=7)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    workers = worker_count(args.workers)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    print(f"device {dev} ({name}); torch {torch.__version__}; {os.cpu_count()} CPUs, {workers} loader workers; "
          f"{args.size} px, batch {args.batch}, {args.steps} timed steps after {args.warmup}", flush=True)

    t0 = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        items = [(f"train/c{i % 100:03d}/{i:06d}.jpg", i % 100) for i in range(args.images)]
        write_images(Path(tmp), items, seed=0, jobs=args.jobs, progress=False)
        ds = LTDataset("gpu_check", Path(tmp), tuple(f"c{k}" for k in range(100)), {"train": tuple(items)})
        img = ImageSettings(image_size=args.size, eval_resize=round(args.size * 256 / 224), mean=CLIP_MEAN,
                            std=CLIP_STD, augment="official", num_workers=args.workers, eval_batch_size=args.batch,
                            preload=False, allow_corrupt=False)
        print(f"{args.images} JPEGs generated in {time.time() - t0:.0f} s", flush=True)
        for arch in [a for a in args.archs.split(",") if a]:
            model, cl = make_model(arch, args.size, dev)
            step = Step(model, dev, cl)
            x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
            y = torch.randint(0, CLASSES, (args.batch,), device=dev)
            resident = timed(itertools.repeat((x, y)), step, args.steps, args.warmup, dev)
            loader = train_loader(ds, img, sampler="sqrt", batch_size=args.batch, seed=0)
            only = timed(endless(loader), lambda a, b: a.to(dev, non_blocking=True), args.steps, args.warmup, dev)
            fed = timed(endless(loader), step, args.steps, args.warmup, dev)
            del loader
            inf = inference_rows(arch, batch=args.inference_batch, repeats=args.inference_repeats, size=args.size,
                                 device=args.device)
            rows.append((arch, resident, only, fed, inf[1][3] / inf[0][3]))
            print(f"  {arch} done ({time.time() - t0:.0f} s)", flush=True)
            del model, step, x, y
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n| model ({args.size} px, batch {args.batch}) | resident: images/s | loader only ({workers} workers) | "
          f"fed by the loader | fed / resident | LGR / linear inference time |")
    print("|---|---|---|---|---|---|")
    for arch, resident, only, fed, ratio in rows:
        print(f"| {arch} | {_n(resident)} | {_n(only)} | {_n(fed)} | {fed / resident:.2f} | {ratio:.3f} |")
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
