"""A shared cache and a shared --out cannot be turned against their users, readers survive any
file, and every bad value is refused before any work (issue 23; trust model: ltrbench/safeio.py).

In-process (``cli.main``) so that the walk over bad inputs stays quick: each case gets a cache and
an output folder that do not exist yet and must still not exist afterwards."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

import ltrbench
from conftest import TINY, tiny_set
from ltrbench import cli, safeio
from ltrbench.config import load_config
from ltrbench.errors import LtrBenchError
from ltrbench.report import build_report
from ltrbench.results import REQUIRED_KEYS, scan_results, write_result
from ltrbench.safeio import StorageError, UnsafePathError
from ltrbench.stages import STAGE_JSON, artifact_dir, check_artifact, run_stage

# --------------------------------------------------------------------------- helpers


def record(method="baseline", seed=0, dataset="synthetic_lt", **extra) -> dict:
    """A result record as ltrbench writes it (what the report and the tables read)."""
    counts = [120, 60, 30, 10, 5, 3]
    acc = [90.0, 80.0, 60.0, 40.0, 20.0, 0.0]
    m = {"overall": 50.0, "many": 90.0, "medium": 70.0, "few": 20.0}
    rec = {"method": method, "variant": "", "dataset": dataset, "backbone": "mini-clip", "pretrained": "builtin",
           "seed": seed, "metrics": {"paper": m, "decoupling": m}, "per_class_accuracy": acc, "train_counts": counts,
           "config": {}, "wall_time_s": 1.0, "git_revision": "abc", "versions": {}, "device": "cpu",
           "run_key": f"{seed:016x}", "stages": [], "eval_split": "test", "num_eval": 24, "created": "2026-01-01"}
    rec.update(extra)
    assert set(REQUIRED_KEYS) <= set(rec)
    return rec


def put(out: Path, rec: dict, name: str | None = None) -> Path:
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    p = runs / (name or f"run{len(list(runs.iterdir()))}__{rec['seed']}.json")
    p.write_text(json.dumps(rec))
    return p


def one_paragraph(err: str) -> str:
    text = err.strip()
    assert "Traceback" not in text, text
    assert text.startswith("error: "), text
    assert "\n" not in text, text  # one paragraph: one line
    return text


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


# --------------------------------------------------------------------------- safe writes


def test_planted_links_are_refused_and_their_targets_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("secret")
    for opener in (safeio.open_append, safeio.open_update):
        link = tmp_path / f"link-{opener.__name__}"
        link.symlink_to(victim)
        with pytest.raises(UnsafePathError, match=re.escape(str(link))):
            opener(link, "the log")
    link = tmp_path / "whole"
    link.symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        safeio.write_atomic(link, "x", "the table")
    hard = tmp_path / "hard"
    os.link(victim, hard)
    with pytest.raises(UnsafePathError, match="hard link"):
        safeio.open_update(hard)
    assert victim.read_text() == "secret" and link.is_symlink()
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "figs").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="figs"):
        safeio.real_dir(tmp_path / "own" / "figs", tmp_path / "own", "the figures folder")


def test_a_failed_write_leaves_no_temp_file_and_says_why(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safeio.os, "replace", full)
    with pytest.raises(StorageError, match="disk is full"):
        safeio.write_atomic(tmp_path / "table.md", "x" * 1000, "the table")
    assert list(tmp_path.iterdir()) == []


def test_result_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_result(tmp_path, record())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the collaborators sharing --out
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [path.name]  # no temp file left


# --------------------------------------------------------------------------- planted links in the cache


@pytest.fixture(scope="module")
def world_plan(tmp_path_factory):
    """A plan of the tiny world in a cache of its own (planning generates the world, nothing else)."""
    cache = tmp_path_factory.mktemp("plant") / "cache"
    old = os.environ["LTRBENCH_CACHE"]
    os.environ["LTRBENCH_CACHE"] = str(cache)
    try:
        yield ltrbench.plan(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=TINY)), cache
    finally:
        os.environ["LTRBENCH_CACHE"] = old


def test_links_planted_at_a_stages_lock_log_and_artifact_are_named_and_never_followed(world_plan, tmp_path,
                                                                                      monkeypatch, capsys):
    plan, cache = world_plan
    victims = tmp_path / "home"
    victims.mkdir()
    for name in ("lock", "log", "dir/keep.txt"):
        (victims / name).parent.mkdir(exist_ok=True)
        (victims / name).write_text(f"the user's {name}")
    before = snapshot(victims)
    stage = plan.stages[0]
    final = artifact_dir(cache, stage)
    final.parent.mkdir(parents=True, exist_ok=True)
    plants = {final.with_name(stage.key + ".lock"): victims / "lock", final.with_name(stage.key + ".log"): victims / "log",
              final: victims / "dir"}
    for link, target in plants.items():
        link.symlink_to(target)
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    rc = cli.main(["--methods", "zeroshot", "--out", str(tmp_path / "out"), "--quiet", *tiny_set()])
    msg = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and all(str(link) in msg for link in plants), msg
    assert snapshot(victims) == before and not (tmp_path / "out").exists()
    # and at the moment of writing, past the checks (a link planted after them): refused the same way
    with pytest.raises(UnsafePathError, match=re.escape(str(final))):
        run_stage(stage, cache, progress=False)
    assert snapshot(victims) == before
    for link in plants:
        link.unlink()


def test_a_cached_manifest_nested_too_deep_is_quarantined(world_plan):
    plan, cache = world_plan
    stage = plan.stages[0]
    final = artifact_dir(cache, stage)
    final.mkdir(parents=True, exist_ok=True)
    (final / STAGE_JSON).write_text("[" * 100_000 + "]" * 100_000)
    found = check_artifact(cache, stage, full=True)
    assert found.aside == "corrupt" and "cannot be read" in found.problem
    import shutil

    shutil.rmtree(final)


# --------------------------------------------------------------------------- the report


def test_a_hostile_result_file_gives_a_report_with_exactly_its_own_figures(tmp_path, monkeypatch):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG the user's secret")
    evil = f"x\n\n![leak]({secret})\n<img src=x onerror=alert(1)>|cell"
    out = tmp_path / "out"
    put(out, record("baseline", git_revision=evil, created=evil))
    put(out, record(f"zeroshot![a]({secret})", seed=1, git_revision="<script>alert(1)</script>"))
    rep = build_report(out, baseline="baseline", cache=tmp_path / "no-cache")
    page = rep.html.read_text()
    import base64

    embedded = [base64.b64decode(s) for s in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert sorted(embedded) == sorted(p.read_bytes() for p in rep.figures) and len(embedded) == len(rep.figures) >= 2
    assert b"secret" not in b"".join(embedded) and "<script>" not in page and "<img src=x" not in page
    assert len(re.findall(r"<img ", page)) == len(rep.figures)
    md = rep.markdown.read_text()
    assert f"![leak]({secret})" not in md and "\n![a]" not in md  # no image line from data


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path):
    out = tmp_path / "out"
    put(out, record("=HYPERLINK(\"http://x\")"))
    put(out, record("baseline", seed=1))
    rep = build_report(out, baseline="baseline", cache=tmp_path / "no-cache")
    text = "\n".join(p.read_text() for p in rep.csvs)
    assert "'=HYPERLINK" in text and not re.search(r"(^|,)=HYPERLINK", text, re.M)


def test_links_planted_in_the_report_folder_are_named_and_their_targets_untouched(tmp_path, capsys):
    out = tmp_path / "out"
    put(out, record())
    victims = tmp_path / "home"
    (victims / "pictures").mkdir(parents=True)
    (victims / "pictures" / "holiday.png").write_bytes(b"png")
    (victims / "notes.md").write_text("mine")
    before = snapshot(victims)
    (out / "report").mkdir()
    (out / "report" / "figures").symlink_to(victims / "pictures")
    (out / "report" / "report.md").symlink_to(victims / "notes.md")
    assert cli.main(["report", "--out", str(out)]) == 2
    msg = one_paragraph(capsys.readouterr().err)
    assert str(out / "report" / "figures") in msg and str(out / "report" / "report.md") in msg
    assert snapshot(victims) == before


# --------------------------------------------------------------------------- the one reader


@pytest.fixture
def junk_folder(tmp_path):
    out = tmp_path / "out"
    put(out, record("baseline"))
    put(out, record("zeroshot", seed=1))
    runs = out / "runs"
    (runs / "truncated.json").write_text(json.dumps(record())[:40])
    (runs / "empty.json").write_text("")
    (runs / "foreign.json").write_text(json.dumps({"name": "another tool", "version": 3}))
    (runs / "list.json").write_text("[1, 2, 3]")
    (runs / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (runs / "binary.json").write_bytes(b"\x00\xff\xfe")
    (runs / ".tmp-abc.json").write_text("{")  # an interrupted write: hidden, never read
    return out


SKIPPED = ("truncated", "empty", "foreign", "list", "deep", "binary")


@pytest.mark.parametrize("command", [["tables"], ["diff", "--table", "1"], ["report"]])
def test_commands_skip_unreadable_files_one_line_each(junk_folder, command, capsys):
    rc = cli.main([*command, "--out", str(junk_folder)])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("skipped ")]
    assert sorted(Path(ln.split(":")[0].split(" ", 1)[1]).stem for ln in lines) == sorted(SKIPPED), err
    assert ".tmp-abc" not in err
    assert cli.main([*command, "--out", str(junk_folder), "--strict"]) == 1
    capsys.readouterr()


def test_a_sweep_table_reads_only_its_trials_results_and_lists_every_failure(junk_folder, tmp_path, capsys):
    from ltrbench import sweep

    root = tmp_path / "sweep"
    (root / "runs").mkdir(parents=True)
    (root / "experiment_state-2026.json").write_bytes(b"\x80\x04binary tune state")  # never read as a result
    for p in (junk_folder / "runs").iterdir():
        (root / "runs" / p.name).write_bytes(p.read_bytes())

    class Trial:
        def __init__(self, lr, error):
            self.config, self.metrics, self.error = {"baseline.train.lr": lr}, {}, error

    spec = sweep._TrialSpec("baseline", "synthetic_lt", None, (0,), (), (), None, str(root), "overall", "val_overall",
                            0, "cpu", {})
    table = sweep._table([Trial("0.1", RuntimeError("every seed failed: A")), Trial("0.2", RuntimeError("B"))],
                         {"baseline.train.lr": ["0.1", "0.2"]}, spec, False)
    assert list(table["status"]) == ["failed: every seed failed: A", "failed: B"]
    err = capsys.readouterr().err
    assert sum(ln.startswith("skipped ") for ln in err.splitlines()) == len(SKIPPED) and "experiment_state" not in err


def test_the_reader_reports_each_file_it_leaves_out(junk_folder):
    scan = scan_results(junk_folder)
    assert {r["method"] for r in scan.records} == {"baseline", "zeroshot"}
    assert sorted(s.path.stem for s in scan.skipped) == sorted(SKIPPED)


# --------------------------------------------------------------------------- every bad input: exit 2, nothing made


def _bomb(tmp: Path) -> Path:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    p = tmp / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    return p


def _loop(tmp: Path) -> Path:
    (tmp / "loop").symlink_to(tmp / "loop2")
    (tmp / "loop2").symlink_to(tmp / "loop")
    return tmp / "loop"


def _file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("x")
    return tmp / "a-file"


def _binary(tmp: Path) -> Path:
    (tmp / "bin.yaml").write_bytes(bytes(range(256)))
    return tmp / "bin.yaml"


RUN = ["--methods", "baseline"]
#: (case, extra CLI arguments given the test's folder, the start of the message)
CASES = [
    ("weight_decay=nan", lambda t: [*RUN, "--set", "baseline.train.weight_decay=nan"], "Invalid configuration"),
    ("lr=inf", lambda t: [*RUN, "--set", "baseline.train.lr=inf"], "Invalid configuration"),
    ("momentum=-inf", lambda t: [*RUN, "--set", "baseline.train.momentum=-inf"], "Invalid configuration"),
    ("min_lr=nan", lambda t: [*RUN, "--set", "baseline.train.min_lr=nan"], "Invalid configuration"),
    ("seed -1", lambda t: [*RUN, "--seeds", "-1"], "Seed -1 is outside"),
    ("seed 2**32", lambda t: [*RUN, "--seeds", str(2**32)], "Seed 4294967296 is outside"),
    ("seed 2**70", lambda t: [*RUN, "--seeds", str(2**70)], "Seed 1180591620717411303424 is outside"),
    ("duplicate seeds", lambda t: [*RUN, "--seeds", "0,1,0"], "Seed 0 is given more than once"),
    ("duplicate methods", lambda t: ["--methods", "baseline,zeroshot,baseline"], "Method baseline is named more"),
    ("YAML alias bomb", lambda t: [*RUN, "--config", str(_bomb(t))], "Config file"),
    ("binary --config", lambda t: [*RUN, "--config", str(_binary(t))], "Config file"),
    ("a long bad --set value", lambda t: [*RUN, "--set", "baseline.train.epochs=" + "9x" * 5000], "--set"),
    ("--retries -1", lambda t: [*RUN, "--retries", "-1"], "retries must be 0 or more"),
    ("--cpus-per-stage 0", lambda t: [*RUN, "--cpus-per-stage", "0"], "cpus_per_stage must be at least 1"),
    ("--ray-address 'not an address'", lambda t: [*RUN, "--ray-address", "not an address"], "--ray-address"),
    ("--ray-address port 70000", lambda t: [*RUN, "--ray-address", "127.0.0.1:70000"], "--ray-address"),
    ("--ray-address nothing listening", lambda t: [*RUN, "--ray-address", "127.0.0.1:1"], "Cannot reach a Ray"),
    ("data root: symlink loop", lambda t: [*RUN, "--data-root", str(_loop(t))], "The data root"),
    ("data root: a file", lambda t: [*RUN, "--data-root", str(_file(t))], "The data root"),
    ("cache: a file", lambda t: [*RUN, "CACHE=" + str(_file(t))], "The cache"),
    ("cache: below a file", lambda t: [*RUN, "CACHE=" + str(_file(t) / "sub")], "The cache"),
    ("sweep: a nan grid point", lambda t: ["sweep", "--method", "baseline", "--grid",
                                           "baseline.train.weight_decay=0.05,nan"], "Invalid configuration"),
    ("sweep: --retries -1", lambda t: ["sweep", "--method", "baseline", "--grid", "baseline.train.lr=0.1",
                                       "--retries", "-1"], "retries must be 0 or more"),
    ("sweep: bad --ray-address", lambda t: ["sweep", "--method", "baseline", "--grid", "baseline.train.lr=0.1",
                                            "--ray-address", "host:99999"], "--ray-address"),
    ("sweep: duplicate seeds", lambda t: ["sweep", "--method", "baseline", "--grid", "baseline.train.lr=0.1",
                                          "--seeds", "3,3"], "Seed 3 is given more than once"),
]


@pytest.mark.parametrize("case,args,start", CASES, ids=[c[0] for c in CASES])
def test_every_bad_input_exits_2_with_one_paragraph_and_creates_nothing(case, args, start, tmp_path, monkeypatch,
                                                                         capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = args(tmp_path)
    for a in [a for a in argv if a.startswith("CACHE=")]:
        cache = Path(a[len("CACHE="):])
        argv.remove(a)
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    command = [] if argv[0] != "sweep" else [argv.pop(0)]
    rc = cli.main([*command, *argv, "--out", str(out), "--quiet", *tiny_set()])
    msg = one_paragraph(capsys.readouterr().err)
    assert rc == 2, msg
    assert msg[len("error: "):].startswith(start), msg
    assert len(msg) < 1500, msg  # no value printed at length
    if cache.parent.is_dir():
        assert not cache.exists() or cache.is_file(), list(cache.rglob("*"))
    assert not out.exists()
    print(f"| {case} | {rc} | {msg[:160]} |")


def test_a_label_beyond_int64_is_a_list_problem():
    from ltrbench.data.lists import _parse_line

    problem, pair = _parse_line("a.jpg 99999999999999999999999", None)
    assert pair is None and "too large" in problem


def test_non_finite_values_are_named_by_their_full_key():
    from ltrbench.validate import config_problems

    cfg = load_config("synthetic_lt", overrides=["baseline.train.weight_decay=nan"])
    assert any(p.startswith("baseline.train.weight_decay=nan: must be a finite number") for p in config_problems(cfg))


def test_an_unwritable_cache_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # (the suite may run as root, for whom every folder is writable: the permission check is what is tested)
    from ltrbench import validate

    cache = tmp_path / "cache"
    cache.mkdir()
    real = os.access
    monkeypatch.setattr(validate.os, "access", lambda p, mode: False if Path(p) == cache and mode & os.W_OK
                        else real(p, mode))
    monkeypatch.setenv("LTRBENCH_CACHE", str(cache))
    rc = cli.main(["--methods", "baseline", "--out", str(tmp_path / "out"), "--quiet", *tiny_set()])
    msg = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "is not writable by this user" in msg and list(cache.iterdir()) == []


def test_a_data_root_the_world_cannot_be_written_into_is_one_paragraph(tmp_path, monkeypatch, capsys):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["--methods", "baseline", "--data-root", str(tmp_path / "ro"), "--out", str(tmp_path / "out"),
                   "--quiet", *tiny_set(["world.num_classes=11"])])
    msg = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "cannot be generated into" in msg and not (tmp_path / "out").exists()


def test_a_full_disk_under_out_is_one_paragraph_and_leaves_no_temp_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    put(out, record())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safeio.os, "replace", full)
    rc = cli.main(["report", "--out", str(out)])
    msg = one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "the disk is full" in msg
    assert not [p for p in (out / "report").rglob("*") if p.name.startswith(".tmp-")]
