#!/usr/bin/env python
"""Embedded Ray against inline: the wall time of the same run, measured alternately.

    PYTHONPATH=. python bench/ray_overhead.py --seed-cache /path/to/a/cache [--rounds 2] [-- RUN ARGS...]

Each measured run is ``python run_bench.py --quiet [RUN ARGS]`` (default: the no-argument built-in
run, every method on synthetic_lt, seed 0) in a subprocess, with ``--executor inline`` or
``--executor ray`` (an embedded local Ray), in a fresh cache that holds only the shared stages copied
from ``--seed-cache`` (``clip_weights`` and ``worlds``: the world and mini-CLIP, which every stage
needs and no executor can run in parallel with anything), so each run computes every other stage
itself. The runs alternate (inline, ray, inline, ray, ...) so that a change in the machine's load
hits both executors alike. The wall time is the subprocess's, start-up included (Python, imports,
the Ray cluster's start). It prints each run and the ratio of the means.

Without ``--seed-cache``, the shared stages are built once first in a private cache (about 5
minutes on 2 cores for the default world).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = ("clip_weights", "worlds")


def run(executor: str, cache: Path, out: Path, extra: list[str]) -> tuple[float, str]:
    env = {**os.environ, "LTRBENCH_CACHE": str(cache), "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
    t0 = time.time()
    r = subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--quiet", "--executor", executor, "--out",
                        str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        sys.exit(f"{executor} run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    stages = re.search(r"stages: .*", r.stdout)
    return wall, stages.group(0) if stages else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-cache", type=Path, default=None,
                    help="a cache holding the run's clip_weights and worlds (only those are copied)")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (inline, ray) (default: 2)")
    ap.add_argument("run_args", nargs="*", help="arguments of run_bench.py after `--` (default: none)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    try:
        seed = args.seed_cache
        if seed is None:
            seed = work / "seed"
            print("building the shared stages once (world, mini-CLIP) ...", flush=True)
            env = {**os.environ, "LTRBENCH_CACHE": str(seed), "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
            subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--quiet", "--methods", "zeroshot", "--out",
                            str(work / "seed-out"), *args.run_args], cwd=REPO, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        times: dict[str, list[float]] = {"inline": [], "ray": []}
        for i in range(args.rounds):
            for executor in ("inline", "ray"):
                cache = work / f"cache-{executor}-{i}"
                for name in SHARED:
                    if (seed / name).exists():
                        shutil.copytree(seed / name, cache / name)
                wall, stages = run(executor, cache, work / f"out-{executor}-{i}", args.run_args)
                times[executor].append(wall)
                print(f"round {i + 1} {executor:>6}: {wall:7.1f} s   {stages}", flush=True)
                shutil.rmtree(cache, ignore_errors=True)
        mean = {k: sum(v) / len(v) for k, v in times.items()}
        print(f"mean inline {mean['inline']:.1f} s, ray {mean['ray']:.1f} s: ray / inline = "
              f"{mean['ray'] / mean['inline']:.2f}x ({os.cpu_count()} CPUs, load now {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
