"""The command line: ``run_bench.py [run] …``, ``sweep``, ``list``, ``check-data``, ``tables``, ``diff``,
``compare``, ``report``.

Each command is argparse → the library (:func:`ltrbench.run`, :func:`ltrbench.results.load_results`,
:func:`ltrbench.checkdata.check_data`) → rendering. Bad input (an unknown method or data set, a bad
``--set``, an unwritable output folder, a data root that fails its checks) is one paragraph on
stderr and exit status 2, before any work starts and with nothing half-written; ``--debug`` adds
the traceback (and ltrbench's log at DEBUG level). A run whose stage failed on every attempt is
reported in an end summary on stderr (exit status 1); the other runs' results are written.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Sequence

from .errors import LtrBenchError
from .registry import BACKBONES, DATASETS, METHODS
from .vocab import CI_MODES, CONVENTION_NOTE, CONVENTIONS, METRIC_NAMES, STRICT_RULES, TOLERANCE

# The commands import the library (torch, pandas, open_clip, timm; Ray for sweeps) when they run, not
# here: `--help`, `list` and the errors found in the arguments answer without them
# (tests/test_cli.py checks sys.modules; bench/startup.py times it).

DEFAULT_DATASET = "synthetic_lt"
DEFAULT_BASELINE = "baseline"  # what `report` measures per-class gains against (the paper's Figure 4)


def _add_request_args(p: argparse.ArgumentParser, *, dataset_default: str | None, dataset_help: str,
                      out_help: str) -> None:
    """The flags ``run`` and ``sweep`` share: the request (data set, backbone, seeds, config) and
    where and how stages execute (:class:`ltrbench.ExecOptions`)."""
    p.add_argument("--dataset", default=dataset_default, help=dataset_help)
    p.add_argument("--backbone", default=None, help="backbone name (default: the data set config's)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set baseline.train.lr=0.001 (repeatable)")
    p.add_argument("--config", dest="files", action="append", default=[], metavar="FILE",
                   help="an extra YAML config file applied after the data set's (repeatable)")
    p.add_argument("--data-root", default=None, help="the data set's root folder")
    p.add_argument("--out", default="results", help=out_help)
    p.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="join an existing Ray cluster (implies --executor ray); token auth is used when a token "
                        "is present (~/.ray/auth_token, RAY_AUTH_TOKEN)")
    p.add_argument("--retries", type=int, default=2, metavar="N",
                   help="attempts after a stage's first failure (default: 2); a training stage resumes from its checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA where a stage reserved a GPU and sees one; cpu: the CPU everywhere; cuda: "
                        "fail where a GPU stage sees no CUDA (default: auto)")
    p.add_argument("--cpus-per-stage", type=int, default=None, metavar="N",
                   help="CPUs each Ray task asks for (default: the stage's data.num_workers + 1)")
    p.add_argument("--no-ship-code", dest="ship_code", action="store_false",
                   help="do not send this checkout's code to the Ray workers (they import their own ltrbench)")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")


def _request(args, methods: list[str] | None, dataset: str | None, table: int | None = None) -> "Request":
    """The request of ``run``/``sweep``, its names checked (from the plugin index: nothing imported)."""
    from .resolve import Request, run_specs  # lazy (see top)

    request = Request(methods, dataset, args.backbone, _seeds(args.seeds), args.overrides, args.files,
                      args.data_root, table)
    run_specs(request)  # an unknown method, data set or backbone, a bad seed: said before torch is imported
    return request


def _options(args, executor: str = "inline", out: str | None = None) -> "api.ExecOptions":
    from . import api  # lazy (see top)

    return api.ExecOptions(executor, args.ray_address, args.retries, args.device, args.ship_code,
                           args.cpus_per_stage, not args.quiet, None if out is None else Path(out))


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="on an error, show the traceback too; log ltrbench's steps (DEBUG level)")
    p = argparse.ArgumentParser(
        prog="run_bench.py",
        description="ltrbench: long-tailed recognition methods on a common CLIP backbone. "
        "With no command, runs the default methods on the built-in world.",
    )
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", parents=[common], help="run methods on a data set (the default command)")
    run.add_argument("--methods", default=None,
                     help="comma-separated method names, or all (default: every method but the long-tail "
                          "loss family, which `list` marks *)")
    run.add_argument("--executor", choices=("inline", "ray"), default="inline",
                     help="run stages in this process in order (inline) or as Ray tasks (ray)")
    run.add_argument("--table", default=None,
                     help="run every row of a paper table (1-4, 8-10) on --dataset (default: the paper's data sets), "
                          "or of a table beyond the paper by name (lift_peft, lt_losses, ...)")
    _add_request_args(run, dataset_default=None,
                      dataset_help=f"data set name (default: {DEFAULT_DATASET}; with --table the paper's)",
                      out_help="output folder for result JSONs and tables (default: results/)")
    sub.add_parser("list", parents=[common], help="list registered methods, data sets and backbones")
    cd = sub.add_parser("check-data", parents=[common], help="validate a data root before training")
    cd.add_argument("--dataset", required=True)
    cd.add_argument("--data-root", required=True)
    cd.add_argument("--sample", type=int, default=None,
                    help="look for and decode only N random listed images per split (default: all)")
    cd.add_argument("--allow-corrupt", action="store_true", help="count unreadable images instead of failing")
    cd.add_argument("--quiet", action="store_true", help="no progress bars")
    sw = sub.add_parser("sweep", parents=[common], help="a hyperparameter sweep of one method on Ray Tune (val split), ranked")
    sw.add_argument("--method", required=True)
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="values of one config key (repeatable; the grid is their product)")
    sw.add_argument("--search", choices=("grid", "random"), default="grid",
                    help="every grid point (grid) or --samples points drawn at random (random)")
    sw.add_argument("--samples", type=int, default=1, help="trials of a random search (default: 1)")
    sw.add_argument("--metric", choices=METRIC_NAMES, default="overall",
                    help="what ranks the trials (default: overall; nll and the ece metrics rank lowest first)")
    sw.add_argument("--split", default="val", help="the split trials are evaluated on (default: val, never test)")
    sw.add_argument("--scheduler", choices=("none", "asha"), default="none",
                    help="asha: stop trials whose first seeds rank low (a trial's iterations are its seeds)")
    sw.add_argument("--rules", action="store_true", help="a row per inference rule (VL-LTR: fusion rules, branches)")
    sw.add_argument("--ci", choices=CI_MODES, default="seeds",
                    help="beside mean ± std: none, seeds (t over seeds; default) or bootstrap (test images, seeds paired)")
    _add_request_args(sw, dataset_default=DEFAULT_DATASET, dataset_help=f"data set name (default: {DEFAULT_DATASET})",
                      out_help="the sweep's folder is <out>/sweeps/<name>/ (default: results/); --seeds: per trial")
    tb = sub.add_parser("tables", parents=[common],
                        help="print the summary tables of a results folder, or a paper table with diffs")
    tb.add_argument("--out", default="results")
    tb.add_argument("--table", default=None, help="render paper table N (ours, the paper's, the difference) or a "
                                                  "table beyond the paper by name")
    tb.add_argument("--dataset", default=None, help="with --table: compare the results on this data set")
    tb.add_argument("--strict", action="store_true", help="exit 1 when a file of the folder is not a readable result")
    _add_stats_args(tb)
    tb.add_argument("--against", default=None, metavar="METHOD",
                    help="mark cells that differ significantly from METHOD's row (paired bootstrap, Holm-corrected)")
    df = sub.add_parser("diff", parents=[common], help="ours against the paper's numbers, row by row; --strict exits 1 on a gap")
    df.add_argument("--table", type=int, default=None, help="paper table N (default: every table, 1-4 and 8-10)")
    df.add_argument("--dataset", default=None,
                    help="compare the results on this data set (default: where the table's rows ran, else the paper's)")
    df.add_argument("--out", default="results", help="the results folder (default: results/)")
    df.add_argument("--tolerance", type=float, default=TOLERANCE,
                    help=f"points ours may differ from the paper's (default: {TOLERANCE:g})")
    df.add_argument("--strict", nargs="?", const="tolerance", default=None, choices=STRICT_RULES,
                    help="exit 1 when a runnable row has no result or a number breaks the rule: tolerance (the "
                         "default rule), interval (the paper's number outside our 95 %% interval), either (outside "
                         "both), both (outside either); and when a file of the folder is not a readable result")
    df.add_argument("--metric", action="append", default=None, choices=("overall", "many", "medium", "few"),
                    help="only this metric's numbers (repeatable; the paper prints only these four)")
    df.add_argument("--ci", choices=CI_MODES, default="seeds",
                    help="our 95 %% interval: seeds (t over seeds; one seed: its bootstrap; default), bootstrap "
                         "(over test images, seeds paired) or none (not shown)")
    _add_compare_parser(sub, common)
    rp = sub.add_parser("report", parents=[common], help="write <out>/report/: report.md, a self-contained report.html, PNG figures, CSV")
    rp.add_argument("--out", default="results", help="the results folder (default: results/); the report goes "
                    "to <out>/report/")
    rp.add_argument("--dataset", default=None, help="only this data set (default: every data set in the results)")
    rp.add_argument("--baseline", default=DEFAULT_BASELINE,
                    help=f"the method per-class gains are measured against (default: {DEFAULT_BASELINE})")
    rp.add_argument("--strict", action="store_true", help="exit 1 when a file of the folder is not a readable result")
    rp.add_argument("--ci", choices=CI_MODES, default="seeds",
                    help="what the tables show beside mean ± std: none, seeds (t interval over seeds; default) or "
                         "bootstrap (over test images, seeds paired)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "debug", False):
        logging.getLogger("ltrbench").setLevel(logging.DEBUG)
    # timm warns that a 1-epoch cosine is constant; tiny test runs do that on purpose.
    logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)
    previous = _terminate_like_interrupt()
    try:
        if args.command == "list":
            return cmd_list()
        if args.command == "check-data":
            return cmd_check_data(args)
        if args.command == "tables":
            return cmd_tables(args)
        if args.command == "diff":
            return cmd_diff(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "sweep":
            return cmd_sweep(args)
        return cmd_run(args)
    except LtrBenchError as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output was piped into a program that stopped reading (head)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as e:
        # (Ray's wait turns an exception raised by a signal handler into a plain KeyboardInterrupt)
        if isinstance(e, Terminated) or _TERMINATED.is_set():
            print("terminated (SIGTERM); finished stages are kept in the cache and a rerun resumes", file=sys.stderr)
            return 128 + int(signal.SIGTERM)
        print("interrupted; finished stages are kept in the cache and a rerun resumes", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that a run ends as on Ctrl-C: running stages stopped
    (Ray tasks cancelled), finished ones kept, one line, exit status 143 (128 + SIGTERM)."""


_TERMINATED = threading.Event()  # set by the handler: what ended the run, whatever exception reached main


def _on_sigterm(signum, frame):
    _TERMINATED.set()
    raise Terminated()


_on_sigterm.ltrbench = True  # ltrbench.cluster puts it back after ray.init installed Ray's own


def _terminate_like_interrupt():
    """Install :func:`_on_sigterm` (main thread only); return the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    _TERMINATED.clear()
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def cmd_list() -> int:
    """Every registered name, read from the plugin files' index (no plugin is imported)."""
    print("methods (* not in a run that names none: --methods all runs every one):")
    for n, info in METHODS.summaries().items():
        mark = " " if info.get("default_run", True) else "*"
        print(f" {mark}{n:<10} {info.get('description', '')}".rstrip())
    print("datasets:")
    for n in DATASETS.summaries():
        print(f"  {n}")
    print("backbones:")
    for n, info in BACKBONES.summaries().items():
        s = info.get("spec")
        print(f"  {n:<10} {s.image_size}px, embed {s.embed_dim}, default weights: {s.default_pretrained}" if s
              else f"  {n}")
    return 0


def cmd_check_data(args) -> int:
    from .checkdata import check_data  # lazy (see top)

    if args.sample is not None and args.sample < 1:
        raise LtrBenchError(f"--sample must be at least 1, got {args.sample}; leave it out to check every image.")
    report = check_data(args.dataset, Path(args.data_root), sample=args.sample, allow_corrupt=args.allow_corrupt,
                        progress=not args.quiet)
    print(report.render())
    return 0 if report.usable else 1


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text)]
    except ValueError:
        raise LtrBenchError(f"--seeds must be comma-separated integers, got {text!r}.") from None


def cmd_run(args) -> int:
    methods = None if args.methods is None or args.table is not None else _csv(args.methods)
    if args.table is not None and args.methods is not None:
        raise LtrBenchError("--table runs the rows of a paper table; leave out --methods.")
    dataset = args.dataset if args.table is not None else (args.dataset or DEFAULT_DATASET)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # also silences bars in plugins (world generation) and workers
    request = _request(args, methods, dataset, args.table)
    from . import api  # the engine (torch, open_clip, timm), after the request's names are checked
    from .safeio import real_dir, write_atomic  # lazy (see top)
    from .tables import (load_extra_table, load_table, params_of,  # lazy (see top)
                         render_extra_table, render_table, summary_table)

    res = api.run(request, _options(args, args.executor, args.out), raise_on_failure=False)
    df, ex = res.frame, res.execution
    failed = f", {ex['failed_stages']} failed" if ex["failed_stages"] else ""
    print(f"stages: {ex['stages']} needed, {ex['executed']} executed, {ex['cached']} cached{failed} "
          f"({ex['seconds']:.0f}s)")
    failures = res.failures
    if df.empty:  # every run failed: nothing to tabulate
        print(api.failure_summary(failures, len(failures), args.retries), file=sys.stderr)
        return 1
    if args.table is not None and not str(args.table).isdigit():
        spec = load_extra_table(args.table)
        params = params_of(res.records)
        md = "\n".join(render_extra_table(spec, df, conv, params=params) for conv in CONVENTIONS)
        name = f"{spec.name}__{dataset or 'default'}.md"
    elif args.table is not None:
        spec = load_table(int(args.table))
        md = "\n".join(render_table(spec, df, conv) for conv in CONVENTIONS)
        name = f"table{spec.number}__{dataset or 'paper'}.md"
    else:
        md = "\n".join(f"### {dataset}: top-1 accuracy (%), {CONVENTION_NOTE[conv]}\n\n{summary_table(df, conv)}\n"
                       for conv in CONVENTIONS)
        name = f"summary__{dataset}__{'-'.join(sorted(df['method'].unique()))}.md"
    print("\n" + md)
    tables = real_dir(Path(args.out) / "tables", Path(args.out), "the tables folder", create=True)
    write_atomic(tables / name, md, "the table")  # atomic: two runs into one --out never mix a table
    print(f"results: {Path(args.out) / 'runs'}  table: {tables / name}")
    if failures:
        print(api.failure_summary(failures, len(df) + len(failures), args.retries), file=sys.stderr)
        return 1
    return 0


def cmd_sweep(args) -> int:
    from . import sweep  # importing Ray Tune takes seconds, which other commands never need
    from .tables import markdown as render  # lazy (see top)

    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    search = sweep.Search(sweep.parse_grid(args.grid), args.search, args.samples, args.metric, args.split,
                          args.scheduler, args.rules, args.ci)
    table, path = sweep.sweep(_request(args, [args.method], args.dataset), search, _options(args, "ray", args.out))
    print(f"\n### sweep of {args.method} on {args.dataset}: {args.split} accuracy (%), ranked by {args.metric}, "
          f"{CONVENTION_NOTE['paper']}\n")
    print(render(table))
    print(f"\ntable: {path}")
    return 0 if not table["status"].str.startswith("failed").any() else 1


def _results(args):
    """The results folder's frame and scan, each file that is not a readable result said in one line on stderr."""
    from .results import load_results, scan_results  # lazy (see top)

    scan = scan_results(Path(args.out))
    for s in scan.skipped:
        print(s.line(), file=sys.stderr)
    return load_results(scan.records), scan


def _skipped_status(args, skipped: int) -> int:
    """1 with ``--strict`` when files were left out (said on stderr), else 0."""
    if skipped:
        print(f"{skipped} file(s) of {Path(args.out) / 'runs'} left out (not readable results)"
              + ("" if getattr(args, "strict", False) else "; --strict would exit 1"), file=sys.stderr)
    return 1 if skipped and getattr(args, "strict", False) else 0


def _add_stats_args(p: argparse.ArgumentParser) -> None:
    """``--ci`` and ``--metric``, for the commands that print tables of ours."""
    p.add_argument("--ci", choices=CI_MODES, default="seeds",
                   help="beside mean ± std: none, seeds (95 %% t interval over seeds; default) or bootstrap (95 %% "
                        "bootstrap over test images, stratified by class, seeds paired)")
    p.add_argument("--metric", action="append", default=None, choices=METRIC_NAMES,
                   help="a column of the summary tables (repeatable; default: overall, many, medium, few; a paper "
                        "table shows the metrics the paper prints)")


def cmd_tables(args) -> int:
    from .tables import (Evidence, extra_tables, leaderboard, load_extra_table, load_table,  # lazy (see top)
                         params_of, render_extra_table, render_table, shifted_table, summary_table)

    df, scan = _results(args)
    records = scan.records
    params = params_of(records)
    evidence = Evidence(records) if args.ci == "bootstrap" or args.against else None
    if args.table is not None and not str(args.table).isdigit():
        spec = load_extra_table(args.table)
        for conv in CONVENTIONS:
            print(render_extra_table(spec, df, conv, dataset=args.dataset, params=params))
        return _skipped_status(args, len(scan.skipped))
    if args.table is not None:
        spec = load_table(int(args.table))
        for conv in CONVENTIONS:
            print(render_table(spec, df, conv, dataset=args.dataset, ci=args.ci, evidence=evidence))
        return _skipped_status(args, len(scan.skipped))
    if df.empty:
        raise LtrBenchError(f"No result JSONs under {Path(args.out) / 'runs'}; run `python run_bench.py` first.")
    if args.against and not (df["method"] == args.against).any():
        raise LtrBenchError(f"--against {args.against}: no runs of {args.against!r} under {Path(args.out) / 'runs'}; "
                            f"it has {', '.join(sorted(df['method'].unique()))}.")
    for conv in CONVENTIONS:
        print(f"### top-1 accuracy (%), {CONVENTION_NOTE[conv]}\n")
        print(summary_table(df, conv, ci=args.ci, metrics=args.metric, evidence=evidence, against=args.against) + "\n")
    print(leaderboard(df, "paper", params))
    for name in extra_tables():  # the tables beyond the paper that this folder has runs of
        spec = load_extra_table(name)
        if df["variant"].isin([spec.variant(r) for r in spec.rows]).any():
            print(render_extra_table(spec, df, "paper", params=params))
    for ds in dict.fromkeys(df["dataset"]):
        print(shifted_table(records, ds))
    return _skipped_status(args, len(scan.skipped))


def cmd_diff(args) -> int:
    """Ours against the paper's numbers (or, on the built-in world, the paper's order of rows).

    Exit status: 0, or with ``--strict`` 1 when any runnable row is missing or outside the tolerance.
    """
    from .tables import available_tables, load_table, render_diff  # lazy (see top)

    if args.tolerance < 0:
        raise LtrBenchError(f"--tolerance must be 0 or more points, got {args.tolerance:g}.")
    df, scan = _results(args)
    records = scan.records
    numbers = [args.table] if args.table is not None else available_tables()
    rule = args.strict or "tolerance"
    failures = 0
    for n in numbers:
        rep = render_diff(load_table(n), df, dataset=args.dataset, tolerance=args.tolerance, records=records,
                          metrics=args.metric, ci=args.ci)
        print(rep.markdown)
        failures += rep.failing(rule)
    where = Path(args.out) / "runs"
    broken = {"tolerance": f"outside ±{args.tolerance:g} points", "interval": "outside our 95 % interval",
              "either": f"outside both ±{args.tolerance:g} points and our 95 % interval",
              "both": f"outside ±{args.tolerance:g} points or our 95 % interval"}[rule]
    if failures:
        print(f"{failures} failing (missing, or {broken}) in {where}"
              + ("" if args.strict else "; --strict would exit 1"))
    else:
        print(f"no runnable row is missing or {broken} in {where} (an order of rows on a "
              "data set without paper numbers is reported above, not judged)")
    return max(1 if args.strict and failures else 0, _skipped_status(args, len(scan.skipped)))


def cmd_report(args) -> int:
    from .report import build_report, summary_of  # lazy (see top)

    rep = build_report(Path(args.out), dataset=args.dataset, baseline=args.baseline, ci=args.ci)
    for s in rep.skipped:
        print(s.line(), file=sys.stderr)
    print(summary_of(rep))
    return _skipped_status(args, len(rep.skipped))


# --------------------------------------------------------------------------- compare


def _add_compare_parser(sub, common: argparse.ArgumentParser) -> None:
    cp = sub.add_parser("compare", parents=[common],
                        help="method A against method B: Δ with a 95 %% interval and p, paired over test images and seeds")
    cp.add_argument("a", metavar="A", help="a method (its plain runs; METHOD[VARIANT] for a table row's runs)")
    cp.add_argument("b", metavar="B", help="the method A is compared with")
    cp.add_argument("--dataset", default=None, help="only this data set (default: every one both ran on)")
    cp.add_argument("--metric", action="append", default=None, choices=METRIC_NAMES,
                    help="the metric(s) compared (repeatable; default: overall, many, medium, few)")
    cp.add_argument("--convention", choices=tuple(CONVENTIONS), default="paper",
                    help="the shot convention of the bucket metrics (default: paper)")
    cp.add_argument("--out", default="results", help="the results folder (default: results/); the table is also "
                    "written to <out>/tables/")


def cmd_compare(args) -> int:
    """``compare A B``: prints the table of :func:`ltrbench.tables.compare_table` and writes it to
    ``<out>/tables/compare__A__B.md``."""
    from .results import scan_results  # lazy (see top)
    from .safeio import real_dir, write_atomic  # lazy (see top)
    from .tables import compare_table  # lazy (see top)

    scan = scan_results(Path(args.out))
    for s in scan.skipped:
        print(s.line(), file=sys.stderr)
    md = compare_table(scan.records, args.a, args.b, dataset=args.dataset, metrics=args.metric,
                       convention=args.convention, where=Path(args.out) / "runs")
    print(md)
    tables = real_dir(Path(args.out) / "tables", Path(args.out), "the tables folder", create=True)
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"compare__{args.a}__{args.b}"
                   + (f"__{args.dataset}" if args.dataset else "")) + ".md"
    write_atomic(tables / name, md, "the comparison table")
    print(f"table: {tables / name}")
    return 0
