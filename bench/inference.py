#!/usr/bin/env python
"""Inference cost of VL-LTR's head against a linear head (the paper's Table 5 pair), measured side by side.

Encoder + LGR head against encoder + linear head: parameters, GMACs per image (multiply-adds, what
vision papers call "GFLOPs"; counted with torch.utils.flop_counter) and per-image CPU time, with
the RN50 architecture at 224 px and ImageNet-LT's shape (1,000 classes, M = 64 anchors), random
weights. The two models are timed alternately (A B A B …) and the medians compared, so machine
noise hits both alike. The LGR keys are computed once before timing, as at deployment.

    python bench/inference.py [--batch 32] [--repeats 7] [--threads 2] [--classes 1000] [--anchors 64]
                              [--backbone RN50|ViT-B-16] [--size 224] [--device cpu|cuda]

:func:`measure` is also the inference row of ``bench/gpu_check.py``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import open_clip
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ltrbench.backbones import create_clip
from ltrbench.heads import LGRHead


class WithHead(nn.Module):
    def __init__(self, visual: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.visual, self.head = visual, head

    def forward(self, x):
        return self.head(self.visual(x))


def params_m(m: nn.Module) -> float:
    # Buffers count too for LGR: the anchors are stored with the model (C×M×D).
    return (sum(p.numel() for p in m.parameters()) + sum(b.numel() for b in m.buffers())) / 1e6


def gmacs_per_image(m: nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(x)
    return fc.get_total_flops() / 2 / len(x) / 1e9


def time_once(m: nn.Module, x: torch.Tensor) -> float:
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        m(x)
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / len(x) * 1e3


def measure(backbone: str = "RN50", *, batch: int = 32, repeats: int = 7, classes: int = 1000, anchors: int = 64,
            size: int = 224, device: str = "cpu") -> list[tuple[str, float, float, float, float]]:
    """Rows (model, params M, GMACs/img, ms/img total, ms/img head only) of encoder + linear head
    and encoder + LGR head, random weights, timed alternately; medians of ``repeats``."""
    torch.manual_seed(0)
    # force_image_size: other sizes than the architecture's (a ResNet's attention pool is sized for it)
    clip = open_clip.create_model(backbone, pretrained=None, force_image_size=size) if size != 224 else \
        create_clip(backbone, None)
    visual = clip.visual.eval()
    with torch.no_grad():
        d = visual(torch.zeros(1, 3, size, size)).shape[1]
    linear = WithHead(visual, nn.Linear(d, classes)).eval()
    anchor_t = torch.randn(classes, anchors, d)
    lgr = WithHead(visual, LGRHead(anchor_t, torch.ones(classes, anchors, dtype=torch.bool), 100.0)).eval()
    dev = torch.device(device)
    linear, lgr = linear.to(dev), lgr.to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    with torch.no_grad():  # warm-up; fills LGR's key cache as a deployment would once
        linear(x[:2])
        lgr(x[:2])
    t_lin, t_lgr = [], []
    for _ in range(repeats):
        t_lin.append(time_once(linear, x))
        t_lgr.append(time_once(lgr, x))
    head_x = torch.randn(batch, d, device=dev)
    t_head_lin, t_head_lgr = [], []
    for _ in range(repeats):
        t_head_lin.append(time_once(linear.head, head_x))
        t_head_lgr.append(time_once(lgr.head, head_x))
    return [
        ("encoder + linear head", params_m(linear), gmacs_per_image(linear, x[:2]), statistics.median(t_lin),
         statistics.median(t_head_lin)),
        ("encoder + LGR head", params_m(lgr), gmacs_per_image(lgr, x[:2]), statistics.median(t_lgr),
         statistics.median(t_head_lgr)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="RN50")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--anchors", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = measure(args.backbone, batch=args.batch, repeats=args.repeats, classes=args.classes, anchors=args.anchors,
                   size=args.size, device=args.device)
    print(f"{args.device}: {args.backbone} {args.size}px, {args.classes} classes, M={args.anchors}, batch {args.batch}, "
          f"{args.threads} threads, median of {args.repeats}")
    print("| model | params (M) | GMACs/img | ms/img (total) | ms/img (head only) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.3f} | {r[3]:.2f} | {r[4]:.3f} |")
    ratio = rows[1][3] / rows[0][3]
    print(f"\nLGR / linear per-image time: {ratio:.3f} (+{100 * (ratio - 1):.1f}%); "
          f"GMACs ratio {rows[1][2] / rows[0][2]:.3f}; the paper measured +18% on a V100")


if __name__ == "__main__":
    main()
