"""The manual's "Adding a method" example (docs/extending.md#adding-a-method), exactly as printed:
saved under the name its first line gives, with no other file changed, it runs with the command the
page gives."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PARENT_CACHE, REPO, tiny_set
from test_docs import marked_blocks

#: The marker of the example's blocks in docs/extending.md (tests/test_docs.py checks every marker).
EXAMPLE = "tests/test_readme.py::test_add_a_method_example_runs_as_written"


def readme_example() -> tuple[str, str, list[str]]:
    """(file name, Python block, command) of docs/extending.md's "## Adding a method" section: the
    blocks marked as run by :func:`test_add_a_method_example_runs_as_written`."""
    found = marked_blocks(EXAMPLE)
    assert {b.where.split(":")[0] for b in found} == {"docs/extending.md"}, [b.where for b in found]
    (block,) = [b.code for b in found if b.lang == "python"]
    (command,) = [b.code.strip() for b in found if b.lang == "bash"]
    first = block.splitlines()[0]
    match = re.fullmatch(r"# (methods/\w+\.py)", first)
    assert match, f"the block's first line must name its file, got {first!r}"
    return match.group(1), block, shlex.split(command)


def test_the_example_names_its_file_and_a_new_method():
    path, block, command = readme_example()
    assert not (REPO / path).exists(), f"{path} already exists: the example must add a method"
    assert command[:2] == ["python", "run_bench.py"] and "--methods" in command
    assert command[command.index("--methods") + 1] == REPO.joinpath(path).stem


@pytest.mark.slow
def test_add_a_method_example_runs_as_written(tmp_path):
    path, block, command = readme_example()
    for item in ("ltrbench", "methods", "datasets", "configs"):
        shutil.copytree(REPO / item, tmp_path / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "run_bench.py", tmp_path / "run_bench.py")
    (tmp_path / path).write_text(block)
    out = tmp_path / "out"
    args = [*command[2:], *tiny_set(), "--out", str(out), "--quiet"]
    r = subprocess.run([sys.executable, "run_bench.py", *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    name = REPO.joinpath(path).stem
    (rec,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
    assert rec["method"] == name and rec["metrics"]["paper"]["overall"] is not None
    assert f"| {name} " in r.stdout  # in the printed table
    # the method's own loss trained its model: the finetune stage (in the session's cache) recorded it
    (ft,) = [s for s in rec["stages"] if s["kind"] == "finetune"]
    stage = json.loads((Path(os.environ["LTRBENCH_CACHE"]) / "finetune" / ft["key"] / "stage.json").read_text())
    assert stage["loss"] == name and stage["config"]["loss_params"] == {"smoothing": 0.1}


@pytest.mark.slow
def test_the_example_leaves_the_key_and_conformance_tests_green(tmp_path):
    """Saved into methods/ of a copy of the project, the example touches no other file: the
    key-pinning test pins only the plans its data file names, the conformance test derives its fast
    settings from a rule, and both pass (the new method conforms too)."""
    path, block, _ = readme_example()
    copy = tmp_path / "project"
    for item in ("ltrbench", "methods", "datasets", "configs", "tests"):
        shutil.copytree(REPO / item, copy / item, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "results").mkdir()
    for item in ("run_bench.py", "pyproject.toml", "results/paper_numbers.csv"):  # results/: no run outputs
        shutil.copy(REPO / item, copy / item)
    (copy / path).write_text(block)
    # This session's cache: the copy's keys are this checkout's (what the key-pinning test checks), so
    # the world, mini-CLIP and what tests/test_conformance.py built here are reused; the copy's
    # conformance test still recomputes the method from scratch once, in a cache of its own. Of the
    # per-method conformance tests only the new method's runs: the others run in this suite itself,
    # on the same code (the copy differs from it by the one new file, which these tests all load).
    env = {**os.environ, "PYTHONPATH": str(copy), PARENT_CACHE: os.environ["LTRBENCH_CACHE"]}
    name = REPO.joinpath(path).stem
    only = f"{name} or not test_method_plans_runs_and_records_deterministically"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-n", "0", "-p", "no:cacheprovider",
                        "-k", only, "tests/test_stage_keys.py", "tests/test_conformance.py"],
                       cwd=copy, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"PASSED tests/test_conformance.py::test_method_plans_runs_and_records_deterministically[{name}]" in r.stdout
    assert "PASSED tests/test_stage_keys.py::" in r.stdout and "PASSED tests/test_conformance.py::test_posthoc" in r.stdout
