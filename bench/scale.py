#!/usr/bin/env python
"""A full-size rehearsal of the real-data path: generate a root, check it, run the whole plan.

    python bench/scale.py --dataset places_lt|imagenet_lt|inat2018 --fraction F --root DIR --out DIR
                          [--jobs 2] [--workers N] [--batch 128] [--target-rate 1000,3000,10000]
                          [--classes N] [--methods vlltr,crt,baseline,zeroshot]

1. Generates, once, a root in the data set's real layout at its real split sizes × F
   (``bench/genroot.py``: the published lists where ../shared/data/splits has them, JPEGs of
   Places365-Standard size, a wiki corpus of the paper's Table 7 size per class). A second call
   with the same request reuses it; an interrupted one resumes.
2. Runs ``check-data`` on it (ltrbench.checkdata, as ``run_bench.py check-data`` does).
3. Plans ``vlltr,crt,baseline,zeroshot`` with ``ltrbench.plan`` and builds every stage with the
   inline executor's own function (:func:`ltrbench.stages.run_stage`), one at a time so that each
   gets its own measurement, then collects the four results with ``ltrbench.run`` (everything
   cached by then) into ``--out``. The data path is the real one: the real tokenizer, the real
   transforms (``data.augment: official``), the real loaders and DataLoader settings; the model is
   ``scale-vit``, a tiny open_clip ViT at 224 px (``bench/model_configs/scale-vit.json``,
   registered here as the built-in world registers mini-CLIP) whose random weights are saved once
   to ``<out>/scale-vit-random.pt`` and passed as ``backbone.pretrained=<that file>``. Every
   training stage runs 1 epoch at batch ``--batch`` (the recipes' lr scaled linearly).
4. Prints, per stage: images (or sentences), seconds, images/s, the peak memory of the stage's
   process (RSS) and of it with its loader workers (PSS, shared pages counted once), the cache size
   it wrote, and each stage's time extrapolated to F = 1 (the images of the full lists at the
   rate measured here); then the input pipeline's per-worker rates on the root's JPEGs and the
   loader workers each ``--target-rate`` (images/s of a GPU step) needs (bench/pipeline.py).

The accuracy of the four runs is that of random weights (chance): the rehearsal measures time,
memory and disk, and that the real-data path runs end to end. The cache is ``<out>/cache`` unless
LTRBENCH_CACHE is set.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

import ltrbench
from ltrbench.api import Plan
from ltrbench.backbones import BackboneSpec, create_clip
from ltrbench.checkdata import check_data
from ltrbench.registry import BACKBONES
from ltrbench.stages import Stage, artifact_dir, config_value, is_done, read_info, run_stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from genroot import FACTS, generate_root  # noqa: E402
from pipeline import measure_rates, print_rates  # noqa: E402

ARCH = "scale-vit"
METHODS = ("vlltr", "crt", "baseline", "zeroshot")
TRAINED = ("cvlp", "lgr", "baseline", "stage1", "crt")  # the sections whose training stages run 1 epoch


def register_arch() -> None:
    """``scale-vit``: a tiny open_clip ViT (224 px, patch 32, width 64, 1 layer) as a backbone."""
    if ARCH not in BACKBONES:
        open_clip.add_model_config(Path(__file__).resolve().parent / "model_configs")
        BACKBONES.add(ARCH, BackboneSpec(ARCH, image_size=224, eval_resize=256, embed_dim=64))


def random_weights(out: Path) -> Path:
    """The architecture's random weights, saved once (a state dict, as a CLIP file would be)."""
    path = out / f"{ARCH}-random.pt"
    if not path.is_file():
        torch.manual_seed(0)
        tmp = path.with_name(path.name + ".part")
        torch.save(create_clip(ARCH, None).state_dict(), tmp)
        os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- memory


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _field_kb(path: Path, name: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, PSS of ``pid`` and its descendants), bytes. PSS counts a page shared by n
    processes as 1/n in each, so the sum over the loader workers is the memory they really add."""
    rss = _field_kb(Path(f"/proc/{pid}/status"), "VmRSS:")
    todo, pss = [pid], 0
    while todo:
        p = todo.pop()
        pss += _field_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss:")
        todo += _children(p)
    return rss * 1024, pss * 1024


class MemoryPeak:
    """Samples :func:`tree_memory` of this process every ``interval`` s in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.rss, self.pss = interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pid = os.getpid()
        while not self._stop.is_set():
            rss, pss = tree_memory(pid)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "MemoryPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        rss, pss = tree_memory(os.getpid())
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- stages


@dataclass
class Row:
    kind: str
    label: str
    images: int  # images through the model (training draws, extracted, evaluated); sentences for text
    unit: str
    seconds: float
    rss: int | None
    pss: int | None
    written: int
    ran: bool
    full_images: int  # the same stage's images at fraction 1


def stage_images(stage: Stage, info: dict[str, Any]) -> tuple[int, str]:
    """What a stage pushed through the model, read from its stage.json."""
    if stage.kind == "text_features":
        return int(info.get("sentences", 0)), "sentences"
    if stage.kind == "features":
        return int(info.get("n", 0)), "images"
    trained = sum(int(r.get("samples", 0)) for r in info.get("history", []))
    return trained + int(info.get("eval_images", 0)), "images"


def full_images(stage: Stage, images: int, root_info: dict[str, Any]) -> int:
    """The stage's images at fraction 1: its split's full size over the generated one."""
    if stage.kind == "text_features" or not images:
        return images
    split = config_value(stage.config, "split") or ("train" if stage.kind in ("finetune", "cvlp", "lgr") else None)
    gen, full = root_info["images"], root_info["full_sizes"]
    if stage.kind == "lgr":  # training draws over train + one pass over the evaluation split
        ev = stage.config.eval_split
        trained = images - gen[ev]
        return round(trained * full["train"] / gen["train"]) + full[ev]
    if split in gen:
        return round(images * full[split] / gen[split])
    return images


def build_stages(plan: Plan, root_info: dict[str, Any]) -> list[Row]:
    rows = []
    for s in plan.stages:
        ran = not is_done(plan.cache, s)
        peak = None
        t0 = time.time()
        if ran:
            print(f"· {s.describe()}", flush=True)
            with MemoryPeak() as peak:
                run_stage(s, plan.cache, progress=False)
        info = read_info(plan.cache, s)
        images, unit = stage_images(s, info)
        seconds = time.time() - t0 if ran else float(info.get("elapsed_s", 0.0))
        rows.append(Row(s.kind, s.label, images, unit, seconds, peak.rss if peak else None,
                        peak.pss if peak else None, folder_bytes(artifact_dir(plan.cache, s)), ran,
                        full_images(s, images, root_info)))
    return rows


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def print_stages(rows: list[Row]) -> None:
    print(f"\n| stage | images | seconds | images/s | peak RSS (GiB) | peak PSS with workers (GiB) | cache written (MB) "
          f"| est. s at F = 1 |")
    print("|---|---|---|---|---|---|---|---|")
    total = est = 0.0
    for r in rows:
        rate = r.images / r.seconds if r.images and r.seconds > 0 else None
        e = r.full_images / rate if rate else r.seconds
        total, est = total + r.seconds, est + e
        n = f"{r.images:,}" + (" sent." if r.unit == "sentences" else "") if r.images else "-"
        print(f"| {r.kind} {r.label}{'' if r.ran else ' (cached)'} | {n} | {r.seconds:.1f} | "
              f"{f'{rate:.0f}' if rate else '-'} | {_gib(r.rss)} | {_gib(r.pss)} | {r.written / 1e6:.1f} | {e:.0f} |")
    written = sum(r.written for r in rows)
    print(f"| all stages | | {total:.1f} | | {_gib(max((r.rss or 0) for r in rows))} | "
          f"{_gib(max((r.pss or 0) for r in rows))} | {written / 1e6:.1f} | {est:.0f} |")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, choices=sorted(FACTS))
    ap.add_argument("--fraction", type=float, required=True, help="of the real split sizes, in (0, 1]")
    ap.add_argument("--root", type=Path, required=True, help="the generated data root (created once)")
    ap.add_argument("--out", type=Path, required=True, help="results, weights and (by default) the cache")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 1)), help="processes generating JPEGs")
    ap.add_argument("--workers", type=int, default=None, help="data.num_workers (default: from the machine)")
    ap.add_argument("--batch", type=int, default=128, help="batch size of every training stage")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--target-rate", default="1000,3000,10000",
                    help="GPU step rates (images/s) to size the loader workers for; '' skips the pipeline bench")
    ap.add_argument("--pipeline-images", type=int, default=200, help="JPEGs the pipeline bench decodes per repeat")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=None, help="keep the first N classes only (a test-sized root)")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LTRBENCH_CACHE", str(args.out / "cache"))
    register_arch()
    t_all = time.time()

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    print(f"## 1. Generated root: {args.dataset} × {args.fraction} at {args.root}", flush=True)
    info = generate_root(args.dataset, args.root, args.fraction, seed=args.seed, jobs=args.jobs, classes=args.classes)
    full = sum(info.full_sizes.values())
    print(f"images {info.images} of {info.full_sizes} (published lists: {', '.join(info.published_lists) or 'none'}); "
          f"{info.classes} classes; {info.jpeg_bytes / 1e9:.2f} GB of JPEGs "
          f"(F = 1: about {info.jpeg_bytes / sum(info.images.values()) * full / 1e9:.1f} GB); "
          f"{info.wiki_sentences:,} wiki sentences; generated in {info.seconds:.0f} s")

    print("\n## 2. check-data", flush=True)
    t0 = time.time()
    with MemoryPeak() as peak:
        rep = check_data(args.dataset, args.root, progress=False)
    print(f"usable: {rep.usable}; {time.time() - t0:.1f} s, peak RSS {_gib(peak.rss)} GiB")
    if not rep.usable:
        print(rep.render())
        return 1

    weights = random_weights(args.out)
    overrides = [f"backbone.pretrained={weights}", "data.augment=official", "data.eval_batch_size=256"]
    overrides += [f"{s}.train.{k}={v}" for s in TRAINED for k, v in (("epochs", 1), ("batch_size", args.batch))]
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    methods = [m for m in args.methods.split(",") if m]
    print(f"\n## 3. The plan of {','.join(methods)} on {ARCH} (random weights {weights}), 1 epoch per training stage, "
          f"batch {args.batch}", flush=True)
    plan = ltrbench.plan(ltrbench.Request(methods, args.dataset, backbone=ARCH, overrides=overrides, data_root=str(args.root)))
    rows = build_stages(plan, info.to_dict())
    df = ltrbench.run(ltrbench.Request(methods, args.dataset, backbone=ARCH, overrides=overrides, data_root=str(args.root)), ltrbench.ExecOptions(out=args.out, progress=False))
    print_stages(rows)
    print(f"\n{len(df.frame)} results written to {args.out / 'runs'} (random weights: chance accuracy):")
    print(df.frame[["method", "overall", "many", "medium", "few"]].to_string(index=False))

    rates = [float(r) for r in args.target_rate.split(",") if r.strip()]
    if rates:
        print("\n## 4. Input pipeline (one loader worker = one process running the transform)", flush=True)
        res = measure_rates(args.root, args.dataset, images=args.pipeline_images)
        print_rates(res, rates)
    print(f"\ntotal {time.time() - t_all:.0f} s; cache {os.environ['LTRBENCH_CACHE']}, "
          f"{folder_bytes(Path(os.environ['LTRBENCH_CACHE'])) / 1e6:.0f} MB; load average now "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow every rate above)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
