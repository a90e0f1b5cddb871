"""The command line: ``run_bench.py [run] …``, ``list``, ``check-data``, ``tables``.

Bad input (an unknown method or data set, a bad ``--set``, an unwritable output folder, a data
root that fails its checks) is one paragraph on stderr and exit status 2, before any work starts
and with nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .errors import LtrBenchError

DEFAULT_DATASET = "synthetic_lt"


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", default=None,
                   help="comma-separated method names (default: every registered method)")
    p.add_argument("--dataset", default=None, help=f"data set name (default: {DEFAULT_DATASET}; with --table the paper's)")
    p.add_argument("--backbone", default=None, help="backbone name (default: the data set config's)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set baseline.train.lr=0.001 (repeatable)")
    p.add_argument("--config", dest="files", action="append", default=[], metavar="FILE",
                   help="an extra YAML config file applied after the data set's (repeatable)")
    p.add_argument("--data-root", default=None, help="the data set's root folder")
    p.add_argument("--out", default="results", help="output folder for result JSONs and tables (default: results/)")
    p.add_argument("--executor", choices=("inline", "ray"), default="inline",
                   help="run stages in this process in order (inline) or as Ray tasks (ray)")
    p.add_argument("--ray-address", default=None, help="join an existing Ray cluster (implies --executor ray)")
    p.add_argument("--table", type=int, default=None,
                   help="run every row of a paper table (1-4, 8-10) on --dataset (default: the paper's data sets)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="ltrbench: long-tailed recognition methods on a common CLIP backbone. "
        "With no command, runs every method on the built-in world.",
    )
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run methods on a data set (the default command)")
    _add_run_args(run)
    sub.add_parser("list", help="list registered methods, data sets and backbones")
    cd = sub.add_parser("check-data", help="validate a data root before training")
    cd.add_argument("--dataset", required=True)
    cd.add_argument("--data-root", required=True)
    cd.add_argument("--sample", type=int, default=None, help="check only N random listed images")
    cd.add_argument("--allow-corrupt", action="store_true", help="count unreadable images instead of failing")
    tb = sub.add_parser("tables", help="print the summary tables of a results folder, or a paper table with diffs")
    tb.add_argument("--out", default="results")
    tb.add_argument("--table", type=int, default=None, help="render paper table N: ours, the paper's, the difference")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # timm warns that a 1-epoch cosine is constant; tiny test runs do that on purpose.
    logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    try:
        from . import plugins

        plugins.load_all()
        if args.command == "list":
            return cmd_list()
        if args.command == "check-data":
            return cmd_check_data(args)
        if args.command == "tables":
            return cmd_tables(args)
        return cmd_run(args)
    except LtrBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished stages are kept in the cache and a rerun resumes", file=sys.stderr)
        return 130


def cmd_list() -> int:
    from .registry import BACKBONES, DATASETS, METHODS

    print("methods:")
    for n in METHODS:
        print(f"  {n:<10} {METHODS.get(n).description}")
    print("datasets:")
    for n in DATASETS:
        print(f"  {n}")
    print("backbones:")
    for n in BACKBONES:
        s = BACKBONES.get(n)
        print(f"  {n:<10} {s.image_size}px, embed {s.embed_dim}, default weights: {s.default_pretrained}")
    return 0


def cmd_check_data(args) -> int:
    from .checkdata import check_data

    report = check_data(args.dataset, Path(args.data_root), sample=args.sample, allow_corrupt=args.allow_corrupt)
    print(report.render())
    return 0 if report.usable else 1


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def cmd_run(args) -> int:
    from .execute import execute
    from .paths import cache_root
    from .plan import RunSpec, plan_runs
    from .registry import DATASETS, METHODS
    from .results import check_writable, load_results, write_result
    from .tables import CONVENTION_NOTE, summary_table

    try:
        seeds = [int(s) for s in _csv(args.seeds)]
    except ValueError:
        raise LtrBenchError(f"--seeds must be comma-separated integers, got {args.seeds!r}.") from None
    if not seeds:
        raise LtrBenchError("--seeds is empty; give at least one seed, e.g. --seeds 0.")
    table = None
    if args.table is not None:
        from .tables import load_table, table_runs

        table = load_table(args.table)
        specs = table_runs(table, seeds, args.dataset, args.backbone)
        methods = sorted({s.method for s in specs})
        dataset_name = args.dataset or "paper"
    else:
        methods = _csv(args.methods) or METHODS.names()
        dataset_name = args.dataset or DEFAULT_DATASET
        specs = [RunSpec(m, dataset_name, args.backbone, seed) for seed in seeds for m in methods]
    for m in methods:
        METHODS.get(m)
    for s in specs:
        DATASETS.get(s.dataset)
    out = Path(args.out)
    check_writable(out)
    progress = not args.quiet
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # also silences bars in plugins (world generation) and workers
    planned = plan_runs(specs, files=args.files, overrides=args.overrides, data_root=args.data_root)
    cache = cache_root()
    executor = "ray" if args.ray_address else args.executor
    t0 = time.time()
    infos = execute([p.target for p in planned], cache, executor=executor, progress=progress,
                    ray_address=args.ray_address)
    ran = sum(i["ran"] for i in infos.values())
    print(f"stages: {len(infos)} needed, {ran} executed, {len(infos) - ran} cached ({time.time() - t0:.0f}s)")
    records = [_record(p, infos, cache) for p in planned]
    for rec in records:
        write_result(out, rec)
    df = load_results(records)
    text = []
    if table is not None:
        from .tables import render_table

        for conv in ("paper", "decoupling"):
            text.append(render_table(table, records, conv))
        name = f"table{table.number}__{dataset_name}.md"
    else:
        for conv in ("paper", "decoupling"):
            text.append(f"### {dataset_name}: top-1 accuracy (%), {CONVENTION_NOTE[conv]}\n")
            text.append(summary_table(df, conv) + "\n")
        name = f"summary__{dataset_name}__{'-'.join(methods)}.md"
    md = "\n".join(text)
    print("\n" + md)
    tables = out / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    (tables / name).write_text(md)
    print(f"results: {out / 'runs'}  table: {tables / name}")
    return 0


def _record(p, infos, cache) -> dict:
    """The result JSON of one planned run (REQUIRED_KEYS of ltrbench.results)."""
    from .results import device_description, git_revision, versions
    from .stages import artifact_dir, topological

    res = json.loads((artifact_dir(cache, p.target) / "result.json").read_text())
    stages = topological([p.target])
    effective = {s.label or s.kind: {"effective_lr": infos[s.key]["effective_lr"],
                                     "effective_batch_size": infos[s.key]["effective_batch_size"]}
                 for s in stages if "effective_lr" in infos[s.key]}
    return {
        "method": p.spec.method,
        "variant": p.spec.variant,
        "dataset": p.spec.dataset,
        "backbone": p.cfg.backbone.name,
        "pretrained": p.cfg.backbone.pretrained,
        "seed": p.spec.seed,
        "metrics": res["metrics"],
        "rules": res.get("rules", {}),
        "primary_rule": res.get("primary_rule"),
        "bucket_rule": res.get("bucket_rule"),
        "per_class_accuracy": res["per_class_accuracy"],
        "train_counts": res["train_counts"],
        "eval_split": res["eval_split"],
        "num_eval": res["num_eval"],
        "info": res.get("info", {}),
        "config": p.cfg.to_dict(),
        "overrides": list(p.spec.overrides),
        "effective": effective,
        "stages": [{"kind": s.kind, "key": s.key, "label": s.label, "elapsed_s": infos[s.key]["elapsed_s"]}
                   for s in stages],
        "run_key": p.target.key,
        "wall_time_s": round(sum(infos[s.key]["elapsed_s"] for s in stages), 2),
        "git_revision": git_revision(),
        "versions": versions(),
        "device": device_description(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def cmd_tables(args) -> int:
    from .results import load_results, read_results
    from .tables import CONVENTION_NOTE, load_table, render_table, summary_table

    if args.table is not None:
        spec = load_table(args.table)
        recs = read_results(Path(args.out)) if (Path(args.out) / "runs").is_dir() else []
        for conv in ("paper", "decoupling"):
            print(render_table(spec, recs, conv))
        return 0
    df = load_results(Path(args.out))
    if df.empty:
        raise LtrBenchError(f"No result JSONs under {Path(args.out) / 'runs'}; run `python run_bench.py` first.")
    for conv in ("paper", "decoupling"):
        print(f"### top-1 accuracy (%), {CONVENTION_NOTE[conv]}\n")
        print(summary_table(df, conv) + "\n")
    return 0
