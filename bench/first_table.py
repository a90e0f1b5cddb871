"""The first table's cost: where the stages of a cold `python run_bench.py` spend their time.

    python bench/first_table.py                 # a cold run in a fresh cache, then its stage shares
    python bench/first_table.py --cache DIR     # the shares of the stages already in DIR (no run)
    python bench/first_table.py -- --methods baseline,vlltr   # arguments after -- go to run_bench.py

Prints each stage's elapsed seconds (its ``stage.json``: ``elapsed_s``) and share of the total,
then the totals by kind and by the method that needs the stage (a stage several methods share
counts once, under "shared"). The wall time of the whole command is printed beside the stages' sum,
so the gap (start-up, planning, the world's generation, writing results) shows. Run it on an idle
machine: other jobs on its cores change every figure (docs/measurements.md#the-first-table).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_infos(cache: Path) -> list[dict]:
    """Every finished stage's ``stage.json`` under ``cache`` (kind, label, key, inputs, elapsed)."""
    out = []
    for meta in sorted(cache.glob("*/*/stage.json")):
        info = json.loads(meta.read_text())
        out.append({"kind": info.get("kind", meta.parent.parent.name), "label": info.get("label", ""),
                    "key": info.get("key", meta.parent.name), "inputs": list(info.get("inputs", [])),
                    "elapsed": float(info.get("elapsed_s") or 0.0)})
    return out


def owners(infos: list[dict]) -> dict[str, set[str]]:
    """The methods (by the label of their ``evaluate`` stage, ``<method>/seed<N>``) that need each key."""
    by_key = {i["key"]: i for i in infos}
    need: dict[str, set[str]] = defaultdict(set)
    for i in infos:
        if i["kind"] != "evaluate":
            continue
        method = i["label"].split("/")[0]
        stack = [i["key"]]
        while stack:
            k = stack.pop()
            if method in need[k]:
                continue
            need[k].add(method)
            stack.extend(x if isinstance(x, str) else x.get("key", "") for x in by_key.get(k, {}).get("inputs", []))
    return need


SMALL_S = 2.0  # stages shorter than this are summed in one line


def _rows(title: str, rows: list[tuple[str, float]], total: float) -> list[str]:
    """A titled block of ``name  seconds  share`` lines, longest first."""
    out = [f"\n{title:<44} {'s':>8} {'share':>7}"]
    out += [f"{name[:44]:<44} {sec:>8.1f} {sec / total:>7.1%}" for name, sec in sorted(rows, key=lambda r: -r[1])]
    return out


def report(infos: list[dict], wall: float | None) -> str:
    total = sum(i["elapsed"] for i in infos) or 1.0
    lines = [f"{len(infos)} stages, {total:.1f} s of stages" + (f", {wall:.1f} s wall for the command" if wall else "")]
    big = [i for i in infos if i["elapsed"] >= SMALL_S]
    small = [i for i in infos if i["elapsed"] < SMALL_S]
    rows = [(f"{i['kind']}[{i['label']}]", i["elapsed"]) for i in big]
    if small:
        rows.append((f"{len(small)} stages under {SMALL_S:g} s each", sum(i["elapsed"] for i in small)))
    lines += _rows("stage", rows, total)
    by_kind: dict[str, float] = defaultdict(float)
    for i in infos:
        by_kind[i["kind"]] += i["elapsed"]
    lines += _rows("by kind", list(by_kind.items()), total)
    need = owners(infos)
    by_method: dict[str, float] = defaultdict(float)
    for i in infos:
        who = need.get(i["key"], set())
        by_method[next(iter(who)) if len(who) == 1 else ("shared" if who else "(no method)")] += i["elapsed"]
    lines += _rows("by method (stages only it needs)", list(by_method.items()), total)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="read this cache's stages instead of running")
    args = ap.parse_args(argv)
    wall = None
    if args.cache is None:
        tmp = Path(tempfile.mkdtemp(prefix="first-table-"))
        cache, out = tmp / "cache", tmp / "results"
        env = {**os.environ, "LTRBENCH_CACHE": str(cache)}
        t0 = time.time()
        subprocess.run([sys.executable, str(REPO / "run_bench.py"), "--out", str(out), *extra], env=env, check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
        wall = time.time() - t0
        print(f"cache: {cache}")
    else:
        cache = args.cache
    print(report(stage_infos(cache), wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
