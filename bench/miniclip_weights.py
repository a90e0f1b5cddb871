"""Pretrain mini-CLIP on the default built-in world and write the weights that ship with the code.

    python bench/miniclip_weights.py            # pretrain, then write datasets/miniclip/mini-clip-builtin.{pt,json}
    python bench/miniclip_weights.py --check    # pretrain, and only compare with the shipped file
    python bench/miniclip_weights.py --cache DIR   # use the pretraining a cold run left in cache DIR

The ``clip_weights`` stage of ``python run_bench.py`` (the default world and ``miniclip`` recipe)
copies the shipped file instead of pretraining (datasets/_miniclip.py). Run this after a change to
the world, the recipe, mini-CLIP's model config or the training loop that should move the
default run's weights: the record holds the stage key the file belongs to, so a stale file is
never used (the stage pretrains instead), and ``tests/test_world.py`` fails until the file is
rebuilt. ``--check`` says whether this machine's pretraining reproduces the shipped file bit for
bit (it does on the machine that wrote it; float differences between CPUs change the last bits).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file; write nothing")
    ap.add_argument("--cache", type=Path, default=None,
                    help="take the pretrained stage from this cache (a cold run's) instead of pretraining")
    args = ap.parse_args(argv)

    os.environ["LTRBENCH_PRETRAIN_MINICLIP"] = "1"  # pretrain, whatever ships
    with tempfile.TemporaryDirectory(prefix="miniclip-") as tmp:
        cache = args.cache.resolve() if args.cache else Path(tmp)
        os.environ["LTRBENCH_CACHE"] = str(cache)
        import torch

        from ltrbench.config import load_config
        from ltrbench.datasets import _miniclip as mc
        from ltrbench.fingerprints import file_sha256
        from ltrbench.stage_kinds import clip_weights_stage
        from ltrbench.stages import artifact_dir, read_info, run_stage, verify

        stage = clip_weights_stage(load_config("synthetic_lt"))
        if args.cache and not verify(cache, stage):
            print(f"{cache} holds no verified {stage.describe()} (key {stage.key}): run without --cache")
            return 1
        t0 = time.perf_counter()
        info = read_info(cache, stage) if args.cache else run_stage(stage, cache)
        if info.get("source", "pretrained") != "pretrained":
            print(f"{stage.describe()} in {cache} was copied from the shipped file, not pretrained")
            return 1
        built = artifact_dir(cache, stage) / "weights.pt"
        digest = file_sha256(built)
        print(f"pretrained {stage.describe()} in {info['elapsed_s']:.1f} s (this call {time.perf_counter() - t0:.1f} s): "
              f"{built.stat().st_size} bytes, SHA-256 {digest}")
        if args.check:
            if not mc.SHIPPED_RECORD.is_file():
                print(f"no shipped weights at {mc.SHIPPED}")
                return 1
            rec = json.loads(mc.SHIPPED_RECORD.read_text())
            same_key, same_file = rec.get("key") == stage.key, rec.get("sha256") == digest
            print(f"shipped: key {rec.get('key')} ({'the same' if same_key else 'differs: ' + stage.key}), "
                  f"SHA-256 {rec.get('sha256')} ({'identical' if same_file else 'differs'})")
            if same_key and not same_file:  # how far apart: the largest weight difference
                a = torch.load(built, map_location="cpu", weights_only=True)
                b = torch.load(mc.SHIPPED, map_location="cpu", weights_only=True)
                print(f"largest absolute weight difference: {max((a[k] - b[k]).abs().max().item() for k in a):.3g}")
            return 0 if same_key and same_file else 1
        mc.SHIPPED.parent.mkdir(exist_ok=True)
        shutil.copyfile(built, mc.SHIPPED)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        engine = {"kind", "key", "label", "version", "config", "inputs", "input_names", "seed", "run_seed", "host",
                  "device", "started", "finished", "pid", "process_peak_rss_mb", "files", "manifest_s", "source",
                  "elapsed_s", "attempt", "node", "executor", "stage_sha256", "where"}
        keep = {k: v for k, v in info.items() if k not in engine}  # the pretraining's own record
        keep["pretrain_elapsed_s"] = info["elapsed_s"]
        record = {"key": stage.key, "label": stage.label, "sha256": digest, "bytes": built.stat().st_size,
                  "written_by": "python bench/miniclip_weights.py", "commit": commit, "torch": torch.__version__,
                  "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "info": keep}
        mc.SHIPPED_RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {mc.SHIPPED} and {mc.SHIPPED_RECORD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
