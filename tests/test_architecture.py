"""The shape of the house: the core (ltrbench/) has no import cycle, names no method or data set,
imports inside functions only with a reason, and only the execution layer imports ray."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO
from ltrbench.registry import DATASETS, METHODS

CORE = REPO / "ltrbench"
#: The execution layer: the only modules that may import ray.
RAY_IMPORTERS = {"ltrbench.execute", "ltrbench.cluster", "ltrbench.sweep", "ltrbench.parallel"}


def _module_name(path: Path) -> str:
    root = REPO if path.is_relative_to(REPO) else path.parents[1]  # a file of a copy: folder/file.py
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}



def _imports(path: Path) -> list[tuple[ast.stmt, list[str], bool]]:
    """Every import statement of a file (in functions too): (node, modules it names, inside a function).

    ``from pkg import name`` names the module ``pkg.name`` when that is a module of the core, else
    ``pkg`` (whose body then defines ``name``).
    """
    core = set(core_modules()) if path.is_relative_to(CORE) else set()
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.append((node, [a.name for a in node.names], id(node) in in_function))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in core else mod for a in node.names]
            out.append((node, sorted(set(names)), id(node) in in_function))
    return out


def import_graph() -> dict[str, set[str]]:
    mods = core_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for _node, names, _ in _imports(path):
            graph[m] |= {n for n in names if n in mods and n != m}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_core_counting_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 20 and graph["ltrbench.api"]  # the graph was really read
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_imports_inside_functions_say_why():
    """An import inside a function only where it saves start-up time, with a comment saying so."""
    unexplained = []
    for m, path in core_modules().items():
        lines = path.read_text().splitlines()
        for node, _names, inside in _imports(path):
            if inside and "#" not in lines[node.lineno - 1]:
                unexplained.append(f"{path.relative_to(REPO)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, unexplained


def test_only_the_execution_layer_imports_ray():
    files = [*CORE.rglob("*.py"), *(REPO / "methods").glob("*.py"), *(REPO / "datasets").glob("*.py")]
    importers = set()
    for path in files:
        for _node, names, _ in _imports(path):
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(_module_name(path))
    assert importers and importers <= RAY_IMPORTERS, importers


def test_the_core_names_no_method_and_no_dataset():
    """No string literal of ltrbench/ (the CLI aside: it defaults to the built-in world) is the name
    of a registered method or data set."""
    names = set(METHODS.names()) | set(DATASETS.names())
    assert {"vlltr", "baseline", "synthetic_lt", "places_lt"} <= names
    found = []
    for m, path in core_modules().items():
        if m == "ltrbench.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_plugin_family_code_is_not_loaded_as_a_plugin():
    """Files starting with _ in methods/ and datasets/ hold shared code and register no method or
    data set of their own name."""
    shared = [p.stem for folder in ("methods", "datasets") for p in (REPO / folder).glob("_*.py")]
    assert {"_cvlp", "_decoupling", "_world", "_miniclip"} <= set(shared)
    assert not set(shared) & (set(METHODS.names()) | set(DATASETS.names()))


PLUGIN_FOLDERS = ("methods", "datasets")


def _plugin_files() -> list[Path]:
    return [p for folder in PLUGIN_FOLDERS for p in sorted((REPO / folder).glob("*.py"))]


def plugin_import_problems(path: Path) -> list[str]:
    """The imports of ltrbench in plugin file ``path`` other than ``ltrbench.plugin`` and the ``_``
    files of its own folder (``ltrbench.methods._cvlp``), as ``line: module``."""
    own = f"ltrbench.{path.parent.name}"
    bad = []
    for node, names, _ in _imports(path):
        for name in names:
            if name != "ltrbench" and not name.startswith("ltrbench."):
                continue
            parts = name.split(".")
            shared = len(parts) == 3 and ".".join(parts[:2]) == own and parts[2].startswith("_")
            from_own = isinstance(node, ast.ImportFrom) and node.module == own and all(
                a.name.startswith("_") for a in node.names)
            if name != "ltrbench.plugin" and not shared and not from_own:
                bad.append(f"{node.lineno}: {name}")
    return bad


def test_plugins_import_ltrbench_only_through_the_plugin_api():
    """Every file of methods/ and datasets/ imports ltrbench only as ``ltrbench.plugin`` or a ``_``
    file of its own folder, so the core behind the API can move."""
    files = _plugin_files()
    assert len(files) >= 15
    bad = [f"{p.relative_to(REPO)}:{problem}" for p in files for problem in plugin_import_problems(p)]
    assert not bad, bad


def test_the_plugin_import_rule_names_what_it_must(tmp_path):
    path = tmp_path / "methods" / "x.py"
    path.parent.mkdir()
    path.write_text("from ltrbench.stages import Stage\nfrom ltrbench.plugin import Method\n"
                    "from ltrbench.methods._cvlp import cvlp_stage\nfrom ltrbench.methods import _decoupling\n"
                    "from ltrbench.datasets._world import WorldSpec\nimport ltrbench.heads\nimport numpy\n")
    assert plugin_import_problems(path) == ["1: ltrbench.stages", "5: ltrbench.datasets._world", "6: ltrbench.heads"]


def test_stages_read_inputs_by_name_and_plugins_build_no_stage_by_hand():
    """No ``ctx.inputs[`` (a positional input) anywhere, and no plugin constructs a Stage itself:
    it plans through the RunContext helpers, whose kinds declare their configs (the engine keys them)."""
    positional = [f"{p.relative_to(REPO)}" for p in [*CORE.rglob("*.py"), *_plugin_files()]
                  if "ctx.inputs[" in p.read_text()]
    assert not positional, positional
    built = []
    for path in _plugin_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Stage":
                built.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not built, built
