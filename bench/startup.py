#!/usr/bin/env python
"""How long the CLI takes to answer, against ``python -c "import torch"``, side by side in one run.

Each command runs ``--repeat`` times in a fresh interpreter, interleaved (so a busy moment of the
machine hits every command alike); the table gives the median wall and CPU seconds (user + system
of the child) and the ratio of CPU to ``import torch``'s CPU. ``--help``, ``list`` and a name error
import no torch (tests/test_registry.py checks ``sys.modules``), so their ratio is well below 1.

    python bench/startup.py [--repeat 5] [--repo PATH]

``--repo`` times another checkout's ``run_bench.py`` beside this one (e.g. the commit before the
lazy imports) in the same run.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch": ["-c", "import torch"],
    "run_bench.py --help": ["run_bench.py", "--help"],
    "run_bench.py list": ["run_bench.py", "list"],
    "run_bench.py --methods vltr (error)": ["run_bench.py", "--methods", "vltr"],
    "run_bench.py tables --help": ["run_bench.py", "tables", "--help"],
}


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(cwd)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--repo", type=Path, default=None, help="another checkout to time beside this one")
    args = ap.parse_args()
    runs = [(name, argv, REPO, "this checkout") for name, argv in COMMANDS.items()]
    if args.repo:
        runs += [(name, argv, args.repo.resolve(), str(args.repo)) for name, argv in COMMANDS.items()
                 if name != "import torch"]
    times: dict[tuple[str, str], list[tuple[float, float]]] = {(n, w): [] for n, _, _, w in runs}
    for _ in range(args.repeat):
        for name, argv, cwd, where in runs:
            times[(name, where)].append(timed(argv, cwd))
    base = statistics.median(c for _, c in times[("import torch", "this checkout")])
    print(f"median of {args.repeat} runs each, interleaved; CPU = user + system of the child\n")
    print(f"| command | checkout | wall (s) | CPU (s) | CPU / import torch |\n|---|---|---:|---:|---:|")
    for (name, where), ts in times.items():
        wall, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
        print(f"| `{name}` | {where} | {wall:.2f} | {cpu:.2f} | {cpu / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
