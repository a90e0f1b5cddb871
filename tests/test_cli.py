"""End-to-end runs of the CLI (marked slow) on the tiny built-in world, and its errors for bad
input: the first run in a subprocess, as a user runs it, the others in this process
(``conftest.run_cli``). tests/test_api.py covers the same ground through the Python API."""
import json
import sys

import pytest

from conftest import REPO, run_cli, tiny_set
from ltrbench.metrics import METRIC_NAMES

slow = pytest.mark.slow

REQUIRED = ["method", "dataset", "backbone", "seed", "metrics", "per_class_accuracy", "train_counts", "config",
            "wall_time_s", "git_revision", "versions", "device"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    r = run_cli("--methods", "baseline,zeroshot", "--dataset", "synthetic_lt", "--out", str(out), "--quiet",
                *tiny_set(), process=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@slow
def test_end_to_end_writes_results_and_table(first_run):
    out, r = first_run
    files = sorted((out / "runs").glob("*.json"))
    assert len(files) == 2
    for f in files:
        rec = json.loads(f.read_text())
        for k in REQUIRED:
            assert k in rec, k
        for conv in ("paper", "decoupling"):
            assert set(rec["metrics"][conv]) == set(METRIC_NAMES)  # overall, many/medium/few and the rest
            assert set(rec["intervals"][conv]) == set(METRIC_NAMES)
        assert len(rec["per_class_accuracy"]) == len(rec["train_counts"]) == 12
        assert rec["config"]["world"]["num_classes"] == 12
        assert rec["backbone"] == "mini-clip"
    assert "| method" in r.stdout and "| baseline" in r.stdout and "| zeroshot" in r.stdout
    assert "paper convention: many ≥ 100, few ≤ 20" in r.stdout
    tables = list((out / "tables").glob("*.md"))
    assert tables and "| baseline" in tables[0].read_text()


@slow
def test_second_run_executes_no_stage_and_gives_identical_metrics(first_run, tmp_path):
    out, _ = first_run
    r = run_cli("--methods", "baseline,zeroshot", "--out", str(tmp_path), "--quiet", *tiny_set())
    assert r.returncode == 0, r.stderr[-3000:]
    assert "0 executed" in r.stdout
    a = {json.loads(f.read_text())["method"]: json.loads(f.read_text())["metrics"] for f in (out / "runs").glob("*.json")}
    b = {json.loads(f.read_text())["method"]: json.loads(f.read_text())["metrics"] for f in (tmp_path / "runs").glob("*.json")}
    assert a == b


@slow
def test_same_seed_in_a_fresh_cache_gives_identical_metrics(first_run, tmp_path):
    out, _ = first_run
    r = run_cli("--methods", "baseline", "--out", str(tmp_path / "o"), "--quiet", *tiny_set(),
                env={"LTRBENCH_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    (mine,) = (tmp_path / "o" / "runs").glob("*.json")
    (theirs,) = [f for f in (out / "runs").glob("baseline*.json")]
    assert json.loads(mine.read_text())["metrics"] == json.loads(theirs.read_text())["metrics"]


def test_list_command_marks_the_methods_a_plain_run_leaves_out(capsys):
    from ltrbench.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "zeroshot", "synthetic_lt", "places_lt", "mini-clip", "RN50"):
        assert name in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(" ")}
    assert lines["*focal"].startswith(" *focal") and lines["baseline"].startswith("  baseline")
    assert {n.lstrip("*") for n, ln in lines.items() if n.startswith("*")} == {"bs", "cb", "focal", "grw", "la",
                                                                                "lade", "ldam_drw"}


@slow
@pytest.mark.parametrize(
    "args, needle",
    [
        (["--methods", "basline"], "Unknown method 'basline'. Did you mean 'baseline'?"),
        (["--dataset", "places_ltt"], "Unknown dataset 'places_ltt'. Did you mean 'places_lt'?"),
        (["--set", "baseline.train.epochz=3"], "unknown config key 'baseline.train.epochz'"),
        (["--set", "baseline.train.epochs=many"], "must be an integer"),
        (["--seeds", "a,b"], "--seeds must be comma-separated integers"),
    ],
)
def test_bad_input_is_one_paragraph_and_exit_2_with_nothing_written(tmp_path, args, needle):
    out = tmp_path / "out"
    r = run_cli("--methods", "baseline", "--out", str(out), "--quiet", *tiny_set(), *args)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert not list(out.glob("runs/*.json"))


@slow
def test_output_folder_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = run_cli("--methods", "baseline", "--out", str(f), "--quiet", *tiny_set())
    assert r.returncode == 2 and "cannot be written" in r.stderr and "Traceback" not in r.stderr


def test_import_datasets_from_repo_root_never_imports_ours():
    import subprocess

    code = ("import sys, datasets; f = getattr(datasets, '__file__', None); "
            "print('FILE', f); print('SUB', [m for m in sys.modules if m.startswith('datasets.')])")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:  # no Hugging Face datasets installed and nothing of ours importable: fine
        assert "ModuleNotFoundError" in r.stderr
        return
    file_line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FILE"))
    assert str(REPO / "datasets") not in file_line  # never our folder as a regular package
    assert "SUB []" in r.stdout  # none of our plugin files executed
