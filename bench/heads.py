#!/usr/bin/env python
"""Fitting the six classic heads from the feature cache against fitting them as the original code does.

Both paths fit the same heads with the same recipes (configs/<dataset>.yaml plus ``--set``), on the
same frozen encoders (the stage-1 model for crt/ncm/tau_norm/lws, the CVLP or CLIP encoder for
knn/fc), side by side in one run:

* cached: read the ``features`` arrays and call each method's ``fit_head`` (what the ``head`` stage does);
* images: the original codes' path. cRT, LWS and FC run every epoch's batches of augmented training
  images (the training transform) through the frozen encoder, and cRT/LWS score the val images each
  epoch for best-epoch selection (the decoupling code's loop), with the same one training loop; NCM, τ-norm and KNN
  extract the features they need from the images (and KNN its corpus sentences) before fitting.
  Both paths score the evaluation split.

The one-time cost of filling the feature cache (the ``features``/``text_features`` stages, shared by
every head and every later run) is printed separately, and a ratio that includes it.

    python bench/heads.py [--set KEY=VALUE ...] [--epochs N] [--threads N] [--methods crt,ncm,tau_norm,lws,knn,fc]

Sizes come from the config (``--set world.num_classes=30 --set crt.train.epochs=5``; a new world
also means a new mini-CLIP, minutes); ``--epochs N`` caps the trained heads' epochs for a quick run.
With the default world and recipes the images path dominates: 35 epochs over 6,936 images plus
cRT/LWS's val passes, about 1.5 minutes on 2 cores with one thread (measured 90 s images against 3 s
cached, 28x).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import ltrbench
from ltrbench.data.loaders import eval_loader, train_loader
from ltrbench.execute import execute
from ltrbench.head_fit import HeadData, HeadEnv, HeadMethod, TrainedHeadMethod, head_logits, load_head_data
from ltrbench.metrics import top1
from ltrbench.models import load_model, read_manifest
from ltrbench.planner import PlannedRun
from ltrbench.registry import METHODS
from ltrbench.stage_kinds import device, encode_split, encode_texts
from ltrbench.stages import Stage, StageContext, artifact_dir
from ltrbench.train import fit, seed_everything


class ImageHeadTask:
    """The original path's TrainTask: augmented images → frozen encoder (no grad) → head → CE."""

    def __init__(self, encoder: nn.Module, head: nn.Module, val_loader, dev: torch.device, decay_all: bool) -> None:
        self.encoder, self.module, self.val_loader, self.dev, self.decay_all = encoder, head, val_loader, dev, decay_all

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.named_parameters()), "decay_all": self.decay_all}]

    def set_mode(self) -> None:
        self.encoder.eval()
        self.module.train()

    def loss(self, batch) -> Tensor:
        x, y = batch
        with torch.no_grad():
            f = self.encoder(x).float()
        return F.cross_entropy(self.module(f), y)

    @torch.no_grad()
    def validate(self) -> float | None:
        if self.val_loader is None:
            return None
        logits, labels = images_logits(self.encoder, self.module, self.val_loader, self.dev)
        return accuracy(logits, labels)


def images_logits(encoder: nn.Module, head: nn.Module, loader, dev: torch.device) -> tuple[Tensor, Tensor]:
    """The head's scores over a loader of images through the frozen encoder, and the labels."""
    labels: list[Tensor] = []

    def batches():
        for x, y in loader:
            labels.append(y)
            yield x

    logits = head_logits(nn.Sequential(encoder, _Float(), head), batches(), dev)
    return logits, torch.cat(labels)


class _Float(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.float()


def _split_of(stage: Stage) -> dict[str, str]:
    """The split each feature role of a head stage was extracted from."""
    return {role: s.config.split for role, s in stage.named_inputs().items() if s.kind == "features"}


def fit_from_images(method: HeadMethod, cfg: Any, stage: Stage, run: PlannedRun, cache: Path, cached: HeadData,
                    work: Path) -> Tensor:
    """The original path for one head; returns its eval-split logits."""
    dev = device()
    model_stage = next(s for s in stage.inputs if s.kind == "features").named_inputs()["model"]
    model = load_model(artifact_dir(cache, model_stage), dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds, img, splits = run.ctx.ds, run.ctx.img, _split_of(stage)
    if isinstance(method, TrainedHeadMethod):
        seed_everything(stage.seed)
        head = method.make_head(cached, cfg).to(dev)  # only shapes and the stage-1 W, b are read
        t = cfg.train
        loader = train_loader(ds, img, sampler=t.sampler, batch_size=t.batch_size, seed=stage.seed,
                              samples_per_class=t.samples_per_class)
        val = eval_loader(ds, splits["val"], img) if t.select_best else None
        task = ImageHeadTask(model.visual, head, val, dev, method.decay_all)
        fit(task, loader, t, work / "ckpt", device=dev, seed=stage.seed, progress=False, desc="images")
        return images_logits(model.visual, head, eval_loader(ds, splits["eval"], img), dev)[0]
    parts: dict[str, Any] = {"num_classes": ds.num_classes}
    for role, split in splits.items():
        f, lg, _ = encode_split(model, eval_loader(ds, split, img), dev, False, split)
        parts[f"{role}_x"], parts[f"{role}_y"] = torch.from_numpy(f), torch.from_numpy(ds.labels(split))
        if lg is not None:
            parts["weight"], parts["bias"] = model.head.weight.detach().cpu(), model.head.bias.detach().cpu()
    if "text" in stage.roles:
        source = stage.named_inputs()["text"].config.source
        corpus = ds.corpus(source)
        sentences = [s for cls in corpus for s in cls]
        backbone = read_manifest(artifact_dir(cache, model_stage))["backbone"]
        parts["text_x"] = torch.from_numpy(encode_texts(model, backbone, sentences, dev, progress=False))
        parts["text_y"] = torch.tensor([k for k, cls in enumerate(corpus) for _ in cls])
    return method.fit_head(HeadData(**parts), cfg, HeadEnv(work, dev, stage.seed)).logits


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return top1(logits.argmax(1).numpy(), labels.numpy())


def prepare(args) -> tuple[list[tuple[PlannedRun, Stage]], Path, float]:
    """Plan the runs and fill the feature cache; return (run, head stage) pairs and the cache's cost."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    trained = [METHODS.get(m) for m in methods if issubclass(METHODS.get(m), TrainedHeadMethod)]
    caps = [f"{m.sections[0]}.train.epochs={args.epochs}" for m in trained] if args.epochs else []
    plan = ltrbench.plan(ltrbench.Request(methods, args.dataset, config_files=args.config, overrides=[*args.set, *caps]))
    pairs = [(p, next(iter(p.target.named_inputs().values()))) for p in plan.runs]
    for p, h in pairs:
        if h.kind != "head":
            raise SystemExit(f"{p.spec.method} is not a head on cached features (its evaluate input is {h.kind})")
    cache = plan.cache
    prereqs = list({s.key: s for _, h in pairs for s in h.inputs}.values())
    ex = execute(prereqs, cache, progress=not args.quiet)
    if ex.failures:
        raise SystemExit("a prerequisite failed: " + "; ".join(f"{f.describe()}: {f.error} (log {f.log})"
                                                             for f in ex.failures.values()))
    infos = ex.infos
    extraction = sum(i["elapsed_s"] for i in infos.values() if i["kind"] in ("features", "text_features"))
    return pairs, cache, extraction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="crt,ncm,tau_norm,lws,knn,fc")
    ap.add_argument("--dataset", default="synthetic_lt")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--config", action="append", default=[], metavar="FILE")
    ap.add_argument("--epochs", type=int, default=None,
                    help="cap every trained head's epochs (both paths alike), for a quicker run; at least 2, "
                         "since the decoupling schedule (cRT, LWS) runs its last epoch at lr 0")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both paths (default 1: on a busy 2-core machine two threads "
                         "made the images path 3-10x slower and the timings erratic; 0 = torch's default)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    if args.epochs is not None and args.epochs < 2:
        ap.error("--epochs must be at least 2 (cRT and LWS train at lr 0 in their last epoch)")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    pairs, cache, extraction = prepare(args)
    rows, tot_c, tot_i = [], 0.0, 0.0
    with tempfile.TemporaryDirectory(prefix="bench-heads-") as tmp:
        for run, stage in pairs:
            method = METHODS.get(run.spec.method)()
            cfg = stage.config.section
            work = Path(tmp) / run.spec.method
            ctx = StageContext.of(stage, work, cache, progress=False)
            t0 = time.perf_counter()
            data = load_head_data(ctx, stage.config.num_classes, stage.config.features)
            method.load_extra(ctx, data)
            cached = method.fit_head(data, cfg, HeadEnv(work / "cached", device(), stage.seed))
            t_c = time.perf_counter() - t0
            t0 = time.perf_counter()
            logits = fit_from_images(method, cfg, stage, run, cache, data, work / "images")
            t_i = time.perf_counter() - t0
            tot_c, tot_i = tot_c + t_c, tot_i + t_i
            rows.append((run.spec.method, t_c, t_i, accuracy(cached.logits, data.eval_y), accuracy(logits, data.eval_y)))
            print(f"{run.spec.method}: cached {t_c:.2f}s, images {t_i:.2f}s", flush=True)
    print(f"\n| head | cached (s) | images (s) | ratio | eval acc cached (%) | eval acc images (%) |")
    print("|---|---|---|---|---|---|")
    for name, t_c, t_i, a_c, a_i in rows:
        print(f"| {name} | {t_c:.2f} | {t_i:.2f} | {t_i / t_c:.1f}× | {a_c:.1f} | {a_i:.1f} |")
    print(f"| **all** | {tot_c:.2f} | {tot_i:.2f} | **{tot_i / tot_c:.1f}×** | | |")
    print(f"\nfeature cache (one-time, shared by every head and later run): {extraction:.1f}s; "
          f"with it counted, cached = {tot_c + extraction:.1f}s, ratio {tot_i / (tot_c + extraction):.1f}×")
    print(f"torch threads: {torch.get_num_threads()}, device: {device()}")


if __name__ == "__main__":
    main()
