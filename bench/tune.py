#!/usr/bin/env python
"""Choose a recipe on val: run a method over a grid of ``--set`` values and print val accuracy.

    python bench/tune.py --method baseline --grid baseline.train.lr=0.0003,0.001,0.003 \\
        --grid baseline.train.epochs=10,20,30 [--seeds 0,1] [--set key=value ...] [--dataset synthetic_lt]
    python bench/tune.py --method vlltr --rules --grid cvlp.train.lr=0.001,0.002

``--rules`` adds a row per inference rule the method records (VL-LTR: the α-fusion, the paper's
probability sum, the logit sum and each branch alone) beside the primary result.

Every run is evaluated on the val split (``data.eval_split=val``), never on test; stages are cached,
so shared prerequisites (the world, mini-CLIP, CVLP) run once across the grid. Each grid point is
one :func:`ltrbench.run` call; the numbers are the mean over seeds of its frame, and a shot bucket
with no class stays empty (—), never 0. This is how the built-in world's recipes in
configs/synthetic_lt.yaml were chosen.
"""
from __future__ import annotations

import argparse
import itertools
import sys

import pandas as pd

import ltrbench
from ltrbench.errors import LtrBenchError
from ltrbench.results import load_results
from ltrbench.tables import markdown

METRICS = ("overall", "many", "medium", "few")


def grid_points(grid: list[str]) -> tuple[list[str], list[tuple[str, ...]]]:
    """The axes' keys and every combination of ``key=value`` overrides (one empty one without a grid)."""
    axes = []
    for g in grid:
        key, sep, values = g.partition("=")
        if not sep or not values:
            raise LtrBenchError(f"--grid {g!r}: expected KEY=V1,V2,..., e.g. --grid baseline.train.lr=0.001,0.003")
        axes.append((key, values.split(",")))
    combos = list(itertools.product(*[[f"{k}={v}" for v in vals] for k, vals in axes])) or [()]
    return [k for k, _ in axes], combos


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--method", required=True)
    ap.add_argument("--dataset", default="synthetic_lt")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--split", default="val")
    ap.add_argument("--rules", action="store_true",
                    help="one row per inference rule (vlltr: alpha, paper, logit_sum, visual_branch, text_branch)")
    args = ap.parse_args(argv)
    try:
        keys, combos = grid_points(args.grid)
        seeds = [int(s) for s in args.seeds.split(",")]
        rows = []
        for combo in combos:
            df = ltrbench.run([args.method], args.dataset, seeds=seeds, progress=True,
                              overrides=[*args.overrides, f"data.eval_split={args.split}", *combo])
            frame = load_results(df.attrs["records"], rules=args.rules)
            if not args.rules:
                frame["rule"] = "primary"
            for rule, g in frame.groupby("rule", sort=False):
                row = {k: c.split("=", 1)[1] for k, c in zip(keys, combo)}
                row.update({"rule": rule, "seeds": str(g["seed"].nunique())})
                row.update({m: "—" if pd.isna(v) else f"{v:.1f}" for m, v in g[list(METRICS)].mean().items()})
                rows.append(row)
    except LtrBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows).rename(columns={"overall": f"{args.split} overall"})
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
