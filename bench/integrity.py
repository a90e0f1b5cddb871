#!/usr/bin/env python
"""What the cache's integrity checks cost on a run, against the run's own wall time.

Every finished stage's ``stage.json`` holds the size and SHA-256 of each of its files (ltrbench.stages):
hashed once when the stage is built, and checked again the first time a process uses the stage
(full hashes), then sizes only. This script runs (or finds cached) the default built-in benchmark,
``python run_bench.py`` with no arguments (every method on ``synthetic_lt``, seed 0), in the cache
of ``$LTRBENCH_CACHE``, and prints, side by side in one process:

* bytes hashed: the sum of every artifact file's size over the run's stages;
* build-time hashing: the sum of ``manifest_s`` recorded in each ``stage.json`` when it was built;
* first use: a full verification of every stage (all hashes), timed here with the process's memory
  of verified stages cleared; and a repeated check (sizes only), as every later use in a process;
* the run's wall time: measured here when stages had to be built, else the sum of the stages'
  recorded compute times (``elapsed_s``), and the ratio of hashing (build + first use) to it.

    LTRBENCH_CACHE=/tmp/ltrc-bench python bench/integrity.py [--set KEY=VALUE ...]

With an empty cache the run takes about 10 minutes on 2 cores. A cache made by an ltrbench without
manifests is rebuilt stage by stage (unverifiable stages are never trusted), the world reused.
"""
from __future__ import annotations

import argparse
import logging
import time

import ltrbench
from ltrbench import stages as st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    plan = ltrbench.plan(ltrbench.Request(None, "synthetic_lt", overrides=args.overrides))
    todo = [s for s in plan.stages if not st.verify(plan.cache, s)]
    t0 = time.perf_counter()
    df = ltrbench.run(ltrbench.Request(None, "synthetic_lt", overrides=args.overrides))
    run_wall = time.perf_counter() - t0
    infos = {s.key: st.read_info(plan.cache, s) for s in plan.stages}
    compute = sum(i["elapsed_s"] for i in infos.values())
    size = sum(f["size"] for i in infos.values() for f in i["files"].values())
    n_files = sum(len(i["files"]) for i in infos.values())
    at_build = sum(i.get("manifest_s", 0.0) for i in infos.values())

    st._VERIFIED.clear()  # a fresh process: every stage is hashed at its first use
    t0 = time.perf_counter()
    assert all(st.verify(plan.cache, s) for s in plan.stages)
    first_use = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert all(st.verify(plan.cache, s) for s in plan.stages)
    later = time.perf_counter() - t0

    wall, wall_what = ((run_wall, f"measured here ({len(todo)} of {len(plan.stages)} stages built)") if todo
                       else (compute, "sum of the stages' recorded compute times (all were cached)"))
    print(f"default built-in run: {len(plan.stages)} stages, {len(df.frame)} runs, {n_files} artifact files")
    print(f"bytes hashed:              {size:,} ({size / 2**20:.1f} MiB)")
    print(f"hashing at build:          {at_build:.3f} s (sum of manifest_s)")
    print(f"verification at first use: {first_use:.3f} s (every file's SHA-256, {size / 2**20 / max(first_use, 1e-9):.0f} MiB/s)")
    print(f"later checks (sizes only): {later:.4f} s")
    print(f"run wall time:             {wall:.1f} s ({wall_what})")
    print(f"ratio (build + first use) / wall: {(at_build + first_use) / wall:.3%}")


if __name__ == "__main__":
    main()
