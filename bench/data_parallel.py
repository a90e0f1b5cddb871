#!/usr/bin/env python
"""What data-parallel training costs per step: N workers against one process (train.devices).

    python bench/data_parallel.py [--workers 2] [--batch 16] [--epochs 3] [--threads 1]
    python bench/data_parallel.py --gpus N [--arch RN50] [--size 224] [--batch 128] [--steps 20]

CPU (default): the baseline's ``finetune`` stage on the tiny built-in world (the test suite's
sizes), at global batch ``--batch``, run twice through ltrbench itself: inline in one process
(``--threads`` torch threads), then on ``--workers`` Gloo workers of one thread each on the
embedded Ray (``train.devices``, ltrbench.parallel). The per-step time is each run's own training
loop time (``train_seconds`` in its stage.json: rank 0's loop, checkpoints included, the group's
start not) over its steps; the table puts the two side by side with their ratio, and the group's
start-up (the stage's wall time less its loop time) beside it. On the tiny world a step is a few
milliseconds of compute, so the ratio is mostly the all-reduce and the per-step gather of the
global batch's augmentation draws: the overhead, not a speed-up.

GPU (``--gpus N``, bench/gpu_check.sh on a machine with several GPUs): steps per second of one
DistributedDataParallel training step (random weights, an open_clip image tower + a 1,000-class
linear head, bf16 autocast, AdamW; batches resident on each GPU, ``--batch`` per GPU) on 1, 2, ...
N GPUs, each a Ray Train group of that many workers (NCCL), with images/s and the scaling
efficiency against N × the one-GPU rate.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: The test suite's tiny built-in world (tests/conftest.py TINY).
TINY = ["world.num_classes=12", "world.max_count=120", "world.min_count=3", "world.val_per_class=3",
        "world.test_per_class=4", "world.num_captions=256", "miniclip.epochs=1", "miniclip.batch_size=64"]


def cpu(args: argparse.Namespace) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # the Ray workers' (one thread each), set before Ray starts
    # A cache of the bench's own (the world and mini-CLIP are built once and kept; the two stages
    # measured are removed first, since a finished stage is never run again).
    os.environ.setdefault("LTRBENCH_CACHE", str(Path(tempfile.gettempdir()) / "ltrbench-bench-data-parallel"))
    import torch

    import ltrbench
    from ltrbench.cluster import connect
    from ltrbench.execute import ExecOptions, execute
    from ltrbench.stages import artifact_dir, read_info

    def stage(extra: list[str]):
        sets = [*TINY, f"baseline.train.batch_size={args.batch}", f"baseline.train.epochs={args.epochs}", *extra]
        p = ltrbench.plan(ltrbench.Request(["baseline"], "synthetic_lt", overrides=sets))
        s = next(s for s in p.stages if s.kind == "finetune")
        for path in (artifact_dir(p.cache, s), artifact_dir(p.cache, s).with_name(s.key + ".partial")):
            shutil.rmtree(path, ignore_errors=True)
        return p.cache, s

    def measured(cache, s) -> tuple[float, int, float]:
        info = read_info(cache, s)
        steps = sum(-(-r["samples"] // args.batch) for r in info["history"])
        return info["train_seconds"] / steps, steps, info["elapsed_s"]

    cache, one = stage([])
    torch.set_num_threads(args.threads)
    t0 = time.time()
    execute([one], cache, executor="inline", progress=False)
    single = measured(cache, one)
    print(f"1 process ({args.threads} thread): {single[0] * 1e3:.1f} ms/step over {single[1]} steps "
          f"({time.time() - t0:.0f} s, the CLIP weights included when not cached)", flush=True)
    cache, many = stage([f"baseline.train.devices={args.workers}"])
    connect(None, cache)
    t0 = time.time()
    ex = execute([many], cache, options=ExecOptions(executor="ray", progress=False))
    if ex.failures:
        raise SystemExit(f"the data-parallel stage failed: {ex.failures}")
    group = measured(cache, many)
    print(f"{args.workers} Gloo workers: {group[0] * 1e3:.1f} ms/step over {group[1]} steps "
          f"({time.time() - t0:.0f} s with the group's start)", flush=True)
    print(f"\n| tiny world, baseline finetune, global batch {args.batch} | ms/step | steps | ratio | group start-up |")
    print("|---|---|---|---|---|")
    print(f"| 1 process, {args.threads} thread(s) | {single[0] * 1e3:.1f} | {single[1]} | 1.00 | |")
    print(f"| {args.workers} Gloo workers, 1 thread each | {group[0] * 1e3:.1f} | {group[1]} | "
          f"{group[0] / single[0]:.2f} | {time.time() - t0 - group[0] * group[1]:.0f} s |")


def _gpu_worker(config: dict) -> dict | None:
    """One Ray Train worker: ``steps`` timed DDP steps after ``warmup``, on resident batches."""
    import ray.train
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from ray.train.torch import get_device
    from torch.nn.parallel import DistributedDataParallel

    sys.path.insert(0, str(Path(config["bench"])))
    from gpu_check import CLASSES, make_model  # noqa: E402  (bench/gpu_check.py)

    dev = get_device()
    torch.cuda.set_device(dev)
    torch.backends.cudnn.benchmark = True
    model, cl = make_model(config["arch"], config["size"], dev)
    ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    x = torch.randn(config["batch"], 3, config["size"], config["size"], device=dev)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (config["batch"],), device=dev)

    def step() -> None:
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(config["warmup"]):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(config["steps"]):
        step()
    torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - t
    if ray.train.get_context().get_world_rank() == 0:
        return {"steps_per_s": config["steps"] / seconds, "device": torch.cuda.get_device_name(dev)}
    return None


def gpus(args: argparse.Namespace) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ray.init(address="local", include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    have = int(ray.cluster_resources().get("GPU", 0))
    top = min(args.gpus, have)
    print(f"{have} GPUs; {args.arch} at {args.size} px, {args.batch} per GPU, {args.steps} timed steps after "
          f"{args.warmup}", flush=True)
    rows = []
    for n in range(1, top + 1):
        t0 = time.time()
        config = {"arch": args.arch, "size": args.size, "batch": args.batch, "steps": args.steps,
                  "warmup": args.warmup, "bench": str(ROOT / "bench")}
        trainer = TorchTrainer(_gpu_worker, train_loop_config=config, torch_config=TorchConfig(backend="nccl"),
                               scaling_config=ScalingConfig(num_workers=n, use_gpu=True),
                               run_config=RunConfig(name=f"dp-bench-{n}", storage_path="/tmp/ltrbench-dp-bench"))
        out = trainer.fit().return_value
        rows.append((n, out["steps_per_s"], out["device"]))
        print(f"  {n} GPU(s): {out['steps_per_s']:.2f} steps/s ({time.time() - t0:.0f} s with the group's start)",
              flush=True)
    base = rows[0][1] if rows else 0.0
    print(f"\n| GPUs ({rows[0][2] if rows else '-'}) | steps/s | images/s | scaling efficiency |")
    print("|---|---|---|---|")
    for n, rate, _ in rows:
        print(f"| {n} | {rate:.2f} | {rate * n * args.batch:.0f} | {rate / base:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="CPU: Gloo workers against one process")
    ap.add_argument("--batch", type=int, default=None, help="global batch (CPU, default 16) or per GPU (default 128)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="CPU: torch threads of the single process")
    ap.add_argument("--gpus", type=int, default=0, help="GPU scaling on 1..N GPUs instead of the CPU comparison")
    ap.add_argument("--arch", default="RN50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    if args.gpus:
        args.batch = args.batch or 128
        gpus(args)
    else:
        args.batch = args.batch or 16
        cpu(args)


if __name__ == "__main__":
    main()
