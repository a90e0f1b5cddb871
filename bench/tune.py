#!/usr/bin/env python
"""Choose a recipe on val: run a method over a grid of ``--set`` values and print val accuracy.

    python bench/tune.py --method baseline --grid baseline.train.lr=0.0003,0.001,0.003 \\
        --grid baseline.train.epochs=10,20,30 [--seeds 0,1] [--set key=value ...] [--dataset synthetic_lt]
    python bench/tune.py --method vlltr --rules --grid cvlp.train.lr=0.001,0.002

``--rules`` adds a row per inference rule the method records (VL-LTR: the α-fusion, the paper's
probability sum, the logit sum and each branch alone) beside the primary result.

Every run is evaluated on the val split (``data.eval_split=val``), never on test; stages are cached,
so shared prerequisites (the world, mini-CLIP, CVLP) run once across the grid. This is how the
built-in world's recipes in configs/synthetic_lt.yaml were chosen.
"""
from __future__ import annotations

import argparse
import itertools
import json

from ltrbench import plugins
from ltrbench.execute import execute
from ltrbench.paths import cache_root
from ltrbench.plan import RunSpec, plan_runs
from ltrbench.stages import artifact_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--dataset", default="synthetic_lt")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--split", default="val")
    ap.add_argument("--rules", action="store_true",
                    help="one row per inference rule (vlltr: alpha, paper, logit_sum, visual_branch, text_branch)")
    args = ap.parse_args()
    plugins.load_all()
    axes = [(g.split("=", 1)[0], g.split("=", 1)[1].split(",")) for g in args.grid]
    combos = list(itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in axes])) or [()]
    seeds = [int(s) for s in args.seeds.split(",")]
    specs = [RunSpec(args.method, args.dataset, None, s, f"g{i}", tuple(c)) for i, c in enumerate(combos) for s in seeds]
    planned = plan_runs(specs, overrides=[*args.overrides, f"data.eval_split={args.split}"])
    execute([p.target for p in planned], cache_root(), progress=True)
    print(f"| {' | '.join(k for k, _ in axes)} | rule | seeds | {args.split} overall | many | medium | few |")
    print("|" + "---|" * (len(axes) + 6))
    for i, combo in enumerate(combos):
        results = [json.loads((artifact_dir(cache_root(), p.target) / "result.json").read_text())
                   for p in planned if p.spec.variant == f"g{i}"]
        rules = {"primary": [r["metrics"]["paper"] for r in results]}
        if args.rules:
            rules.update({name: [r["rules"][name]["paper"] for r in results] for name in results[0].get("rules", {})})
        vals = [c.split("=", 1)[1] for c in combo]
        for name, rows in rules.items():
            mean = {m: sum(r[m] or 0 for r in rows) / len(rows) for m in ("overall", "many", "medium", "few")}
            print(f"| {' | '.join(vals)} | {name} | {len(rows)} | " + " | ".join(f"{mean[m]:.1f}" for m in mean) + " |")


if __name__ == "__main__":
    main()
