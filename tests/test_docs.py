"""The manual (README.md and docs/): every ``docs/<page>.md#<anchor>`` citation in the repository
names a page and a heading that exist, no citation points at files outside the repository, every
command and Python block either runs in a test or says why not, the README stays short, and
``mkdocs build --strict`` passes.

A block's marker is the HTML comment on the line before it (invisible on the rendered page):
``<!-- run: tests/<file>.py::<test> -->`` names the test that runs it (that test collects its blocks
with :func:`marked_blocks`, so the claim cannot go stale), ``<!-- not run: <why> -->`` says why not
(real data, a GPU, a cluster, ...)."""
from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, TINY

DOCS = REPO / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MANUAL = [REPO / "README.md", *PAGES]
#: Languages of blocks that are commands or code, so must run in a test or carry a "not run" marker.
RUNNABLE = {"bash", "sh", "shell", "console", "python", "py", "pycon"}
#: Files that may cite the docs: the repository's text files (not its outputs or caches).
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".ini"}
SKIP_DIRS = {".git", "site", "__pycache__", ".pytest_cache", "build", "dist"}
SKIP_OUTPUTS = ("results/runs", "results/tables", "results/report", "results/sweeps")  # run outputs
#: What code used to cite before the manual was in the repository (spelt so that this file does not
#: cite them itself).
OUTSIDE = (*(n + ".md" for n in ("ALGORITHMS", "ARCHITECTURE", "BUILTIN_WORLD", "STYLE", "PEERS")),
           "shared" + "/design")
CITATION = re.compile(r"\bdocs/([\w-]+\.md)(?:#([\w-]+))?")
LINK = re.compile(r"\]\(([\w./-]+\.md)?(?:#([\w-]+))?\)")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(run|not run):\s*(.*?)\s*-->")
RUN_ID = re.compile(r"(tests/\w+\.py)::(\w+)")


# --------------------------------------------------------------------------- anchors


def slug(heading: str) -> str:
    """MkDocs' anchor of a heading (Python-Markdown's ``toc`` slug): the heading's text with its
    inline markup dropped (link targets, backticks, asterisks), accents folded to ASCII (other
    non-ASCII characters dropped), everything but word characters, spaces and hyphens dropped,
    lower-cased, and each run of spaces and hyphens turned into one hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _outside_fences(text: str) -> str:
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def anchors(page: Path) -> list[str]:
    """The anchors of a page's headings, in order; a repeated one gets ``_1``, ``_2``... as in MkDocs."""
    out: list[str] = []
    for m in re.finditer(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", _outside_fences(page.read_text()), re.M):
        base = slug(m.group(2))
        name, n = base, 0
        while name in out or not name:
            n += 1
            name = f"{base}_{n}"
        out.append(name)
    return out


def _text_files() -> list[Path]:
    files = [REPO / ".ci" / "run"]
    for p in sorted(REPO.rglob("*")):
        rel = p.relative_to(REPO)
        if p.is_file() and p.suffix in TEXT_SUFFIXES and not SKIP_DIRS & set(rel.parts[:-1]) \
                and not any(part.endswith(".egg-info") for part in rel.parts) \
                and not rel.as_posix().startswith(SKIP_OUTPUTS):
            files.append(p)
    return [f for f in files if f.is_file()]


def citations() -> list[tuple[str, str, str | None]]:
    """Every ``docs/<page>.md[#anchor]`` in the repository's text files: (where, page, anchor)."""
    found = []
    for f in _text_files():
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                found.append((f"{f.relative_to(REPO)}:{i}", m.group(1), m.group(2)))
    return found


def test_the_anchor_rule_is_the_one_mkdocs_uses():
    markdown = pytest.importorskip("markdown")  # installed with mkdocs (the test and docs extras)
    for page in PAGES:
        md = markdown.Markdown(extensions=["toc", "tables", "fenced_code", "admonition"])
        html = md.convert(page.read_text())
        assert re.findall(r'<h[1-6] id="([^"]+)"', html) == anchors(page), page.name
    assert slug("`tau_norm`") == "tau_norm" and slug("Paper vs code") == "paper-vs-code"
    assert slug("τ-normalised, and [LGR](#lgr)!") == "-normalised-and-lgr"


def test_every_docs_citation_in_the_repository_resolves():
    found = citations()
    assert len(found) > 100  # the code cites the manual (docstrings, comments, configs, tests)
    pages = {p.name: set(anchors(p)) for p in PAGES}
    broken = [f"{where}: docs/{page}{'#' + a if a else ''}" for where, page, a in found
              if page not in pages or (a is not None and a not in pages[page])]
    assert not broken, "citations that do not resolve:\n" + "\n".join(broken)


def test_links_between_pages_resolve():
    """Relative links of the docs pages (``page.md#anchor``, ``#anchor``) and the README's links into
    docs/ (``mkdocs build --strict`` checks the pages too; this also runs without mkdocs)."""
    pages = {p.name: set(anchors(p)) for p in PAGES}
    broken = []
    for page in MANUAL:
        for m in LINK.finditer(_outside_fences(page.read_text())):
            target, anchor = m.group(1), m.group(2)
            if page.name == "README.md":
                if not target or not target.startswith("docs/"):
                    continue
                target = target[len("docs/"):]
            name = target or page.name
            if name not in pages or (anchor and anchor not in pages[name]):
                broken.append(f"{page.name}: {m.group(0)}")
    assert not broken, broken


def test_no_citation_points_outside_the_repository():
    """The design notes these citations once named lived beside the repository, not in it."""
    stale = []
    for f in _text_files():
        for i, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if any(name in line for name in OUTSIDE):
                stale.append(f"{f.relative_to(REPO)}:{i}: {line.strip()[:100]}")
    assert not stale, stale


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    where: str  # file:line of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None  # ("run", "tests/x.py::test_y") or ("not run", why)


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        mark = MARKER.fullmatch(before)
        line = text[:m.start()].count("\n") + 1
        out.append(Block(f"{page.relative_to(REPO)}:{line}", m.group(1).strip(), m.group(2),
                         (mark.group(1), mark.group(2)) if mark else None))
    return out


def marked_blocks(test_id: str) -> list[Block]:
    """The blocks of README.md and docs/ whose marker says the test ``test_id`` runs them."""
    return [b for page in MANUAL for b in blocks(page) if b.marker == ("run", test_id)]


def test_every_block_runs_in_a_test_or_says_why_not():
    problems = []
    all_blocks = [b for page in MANUAL for b in blocks(page)]
    assert len(all_blocks) > 20
    for b in all_blocks:
        if not b.lang:
            problems.append(f"{b.where}: a block without a language (text, bash, python, ...)")
        elif b.lang in RUNNABLE and b.marker is None:
            problems.append(f"{b.where}: a {b.lang} block without a marker (<!-- run: tests/...::test -->"
                            " or <!-- not run: why -->) on the line before it")
        elif b.marker and b.marker[0] == "not run" and len(b.marker[1]) < 10:
            problems.append(f"{b.where}: say why the block is not run")
        elif b.marker and b.marker[0] == "run":
            m = RUN_ID.fullmatch(b.marker[1])
            if not m or not (REPO / m.group(1)).is_file():
                problems.append(f"{b.where}: {b.marker[1]!r} is not tests/<file>.py::<test>")
                continue
            tree = ast.parse((REPO / m.group(1)).read_text())
            fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == m.group(2)), None)
            if fn is None or "marked_blocks" not in ast.unparse(fn) + _helpers_source(tree, fn):
                problems.append(f"{b.where}: {b.marker[1]} does not exist or does not read its blocks "
                                "with marked_blocks()")
    assert not problems, "\n".join(problems)


def _helpers_source(tree: ast.Module, fn: ast.FunctionDef) -> str:
    """The source of the module-level functions ``fn`` calls (a test may read its blocks in a helper)."""
    called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    return "".join(ast.unparse(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in called)


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def _tiny_args() -> list[str]:
    from ltrbench.config import tiny_overrides

    return [a for item in [*TINY, *tiny_overrides()] for a in ("--set", item)]


def _runs_stages(args: list[str]) -> bool:
    return not args or args[0] in ("run", "sweep") or args[0].startswith("-")


@pytest.mark.slow
def test_the_tour_runs_on_a_tiny_world(tmp_path, monkeypatch, capsys):
    """The tour's commands (README, getting started) in order, in an empty folder, as written; the
    commands that run stages get the tiny world's overrides (tests/conftest.py's TINY and every
    section's tiny training, ltrbench.config.tiny_overrides) and ``--quiet``."""
    from ltrbench import cli

    tour = marked_blocks("tests/test_docs.py::test_the_tour_runs_on_a_tiny_world")
    assert len(tour) >= 2 and all(b.lang == "bash" for b in tour)
    commands = list(dict.fromkeys(c for b in tour for c in (ln.strip() for ln in b.code.splitlines())
                                  if c and not c.startswith("#")))
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = shlex.split(command, comments=True)
        assert args[:2] == ["python", "run_bench.py"], command
        args = args[2:] + (_tiny_args() + ["--quiet"] if _runs_stages(args[2:]) else [])
        rc = cli.main(args)
        out = capsys.readouterr()
        assert rc == 0, f"{command}: exit {rc}\n{out.err[-3000:]}"
    assert list((tmp_path / "results" / "runs").glob("*.json"))
    assert (tmp_path / "results" / "report" / "report.html").is_file()


@pytest.mark.slow
def test_the_python_blocks_run_on_a_tiny_world(tmp_path, monkeypatch):
    """The library API block, as written, in an empty folder; every ``Request`` it builds gets the
    tiny world's overrides first (its own overrides still win)."""
    import ltrbench
    from ltrbench.config import tiny_overrides

    real = ltrbench.Request

    def tiny_request(methods, dataset, *args, overrides=(), **kwargs):
        return real(methods, dataset, *args, overrides=[*TINY, *tiny_overrides(), *overrides], **kwargs)

    code = marked_blocks("tests/test_docs.py::test_the_python_blocks_run_on_a_tiny_world")
    assert code and all(b.lang == "python" for b in code)
    monkeypatch.setattr(ltrbench, "Request", tiny_request)
    monkeypatch.chdir(tmp_path)
    for b in code:
        namespace: dict = {"__name__": "__docs__"}
        exec(compile(b.code, b.where, "exec"), namespace)
        assert len(namespace["res"].frame) == 4 and len(namespace["plan"].to_frame()) > 5
    assert len(list((tmp_path / "results" / "runs").glob("*.json"))) == 4


# --------------------------------------------------------------------------- the build


def test_mkdocs_builds_the_manual_strictly(tmp_path):
    """What .ci/run runs: a dead link, a missing anchor or a page left out of the nav fails."""
    pytest.importorskip("mkdocs")  # in the test and docs extras
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "algorithms" / "index.html").is_file()
