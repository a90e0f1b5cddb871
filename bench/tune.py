#!/usr/bin/env python
"""Choose a recipe on val: a thin wrapper of ``python run_bench.py sweep`` (Ray Tune), kept so the
commands in configs/synthetic_lt.yaml's comments still run.

    python bench/tune.py --method baseline --grid baseline.train.lr=0.0003,0.001,0.003 \\
        --grid baseline.train.epochs=10,20,30 [--seeds 0,1] [--set key=value ...] [--dataset synthetic_lt]
    python bench/tune.py --method vlltr --rules --grid cvlp.train.lr=0.001,0.002

is exactly ``python run_bench.py sweep`` with the same arguments (see ``run_bench.py sweep --help``
and :mod:`ltrbench.sweep`): every grid point one trial on the val split, mean ± std over its seeds,
ranked, the table written under ``--out``.
"""
from __future__ import annotations

import sys

from ltrbench import cli

if __name__ == "__main__":
    sys.exit(cli.main(["sweep", *sys.argv[1:]]))
