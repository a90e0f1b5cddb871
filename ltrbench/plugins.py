"""Loads the plugin folders ``methods/`` and ``datasets/`` as ``ltrbench.methods`` / ``ltrbench.datasets``.

The folders sit at the repository's top level (the design card's layout) but must never be
importable as top-level ``methods`` or ``datasets`` (that would shadow Hugging Face's
``datasets``), so they hold no ``__init__.py`` and are loaded here by an explicit list: every
``*.py`` file not starting with ``_``, in name order. A wheel install maps them to
``ltrbench/methods`` and ``ltrbench/datasets`` (pyproject ``package-dir``); a source checkout or
an editable install finds them beside the package. Importing a plugin file registers it.

Files starting with ``_`` are not plugins: they hold code shared by a family of plugins (e.g.
``methods/_cvlp.py``) and are imported by those plugins as ``ltrbench.methods._cvlp``. This module
imports nothing of the core but its errors, so the registries can call :func:`load_all` on first use.
"""
from __future__ import annotations

import ast
import importlib.util
import sys
import traceback
import types
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from .errors import LtrBenchError, PluginError

_PKG = Path(__file__).resolve().parent
PLUGIN_FOLDERS = ("datasets", "methods")
_state = "unloaded"  # unloaded → loading → loaded


def _folder(name: str) -> Path:
    for cand in (_PKG / name, _PKG.parent / name):
        if cand.is_dir() and any(cand.glob("*.py")):
            return cand
    raise RuntimeError(f"ltrbench: plugin folder {name!r} not found beside {_PKG}")


def _package(name: str) -> types.ModuleType:
    """The synthetic package ``ltrbench.<name>`` whose path is the plugin folder."""
    pkg_name = f"ltrbench.{name}"
    pkg = sys.modules.get(pkg_name)
    if pkg is None:
        folder = _folder(name)
        pkg = types.ModuleType(pkg_name, f"ltrbench {name} plugins, loaded from {folder}")
        pkg.__path__ = [str(folder)]  # type: ignore[attr-defined]
        sys.modules[pkg_name] = pkg
        setattr(sys.modules["ltrbench"], name, pkg)  # the parent package is always imported first
    return pkg


def load_plugin(folder: str, stem: str) -> None:
    """Import ``<folder>/<stem>.py`` once as ``ltrbench.<folder>.<stem>`` (registering its plugin)."""
    pkg = _package(folder)
    mod_name = f"{pkg.__name__}.{stem}"
    path = Path(pkg.__path__[0]) / f"{stem}.py"
    if mod_name in sys.modules or not path.is_file():
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = mod
    try:
        spec.loader.exec_module(mod)
    except LtrBenchError:
        del sys.modules[mod_name]
        raise
    except Exception as e:
        del sys.modules[mod_name]
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == str(path)), "?")
        raise PluginError(f"The plugin {path} (line {line}) failed to load: {type(e).__name__}: {e}. Fix the file, "
                          f"or move it out of {path.parent} (run with --debug for the traceback).") from e


def install() -> None:
    """Create the packages ``ltrbench.methods`` and ``ltrbench.datasets`` (no plugin is loaded), so
    ``import ltrbench.methods._cvlp`` works from anywhere; ``import ltrbench`` calls this."""
    for name in PLUGIN_FOLDERS:
        _package(name)


def _load_folder(name: str) -> None:
    for path in sorted(_folder(name).glob("*.py")):
        if not path.name.startswith("_"):
            load_plugin(name, path.stem)


def load_all() -> None:
    """Import every dataset and method plugin once (idempotent, cheap after the first call).

    The harness's registries call it on first lookup; a lookup made by a plugin file while the
    plugins load (re-entrant call) returns at once and sees what is registered so far.
    """
    global _state
    if _state != "unloaded":
        return
    _state = "loading"
    try:
        for name in PLUGIN_FOLDERS:
            _load_folder(name)
    except BaseException:
        _state = "unloaded"
        raise
    _state = "loaded"


# --------------------------------------------------------------------------- the index: names without imports

#: The registries whose names a user types (``--methods``, ``--dataset``, ``--backbone``, a weights
#: tag), by the name a plugin imports them under from ltrbench.plugin. The others (stage kinds,
#: config sections, losses) are only ever looked up by code that runs after the plugins load.
INDEXED = ("METHODS", "DATASETS", "BACKBONES", "WEIGHTS")


#: What the index reads from a registered class's body (literals only): a method's one line and
#: whether a run that names no methods runs it (:class:`ltrbench.planner.Method`).
CLASS_INFO = ("description", "default_run")


class IndexEntry(NamedTuple):
    """One name a plugin file registers, found by reading the file (not importing it)."""

    registry: str  # one of INDEXED
    name: str
    path: Path  # the file that registers it
    info: Mapping[str, Any]  # a method's CLASS_INFO, or a BackboneSpec's fields


class PluginIndex(NamedTuple):
    entries: Mapping[str, Mapping[str, IndexEntry]]  # registry → name → entry
    #: Registries some file adds to with a name the reader cannot see (computed): their index is
    #: incomplete, and a lookup of a name the index lacks imports the plugins before answering.
    dynamic: frozenset

    def complete(self, registry: str) -> bool:
        return registry not in self.dynamic


_index: PluginIndex | None = None


def index() -> PluginIndex:
    """What every plugin file (``_`` files included) registers, read from its syntax tree.

    ``run_bench.py --help``, ``list`` and an unknown name's error answer from here without importing
    a plugin (and so without torch, open_clip or timm). A call ``METHODS.register("name")`` or
    ``BACKBONES.add("name", BackboneSpec(...))`` whose name is a literal string (or a module-level
    constant bound to one) is indexed; a method's ``description`` and ``default_run`` are read from
    its class body, a backbone's spec from the literal arguments. A file registering a computed name makes that
    registry :meth:`PluginIndex.dynamic`. ``tests/test_registry.py`` checks the index against the
    registries after the plugins load.
    """
    global _index
    if _index is None:
        entries: dict[str, dict[str, IndexEntry]] = {r: {} for r in INDEXED}
        dynamic: set[str] = set()
        for name in PLUGIN_FOLDERS:
            for path in sorted(_folder(name).glob("*.py")):
                for e in _read(path, dynamic):
                    entries[e.registry].setdefault(e.name, e)
        from .specs import CORE_BACKBONES, BackboneSpec  # ltrbench.backbones (torch) registers the core ones

        for name, e in entries["BACKBONES"].items():
            try:
                entries["BACKBONES"][name] = e._replace(info={"spec": BackboneSpec(*e.info["args"], **e.info["kwargs"])})
            except (KeyError, TypeError):
                entries["BACKBONES"][name] = e._replace(info={})

        for spec in CORE_BACKBONES:
            entries["BACKBONES"][spec.name] = IndexEntry("BACKBONES", spec.name, _PKG / "backbones.py",
                                                         {"spec": spec})
        _index = PluginIndex(entries, frozenset(dynamic))
    return _index


def _read(path: Path, dynamic: set[str]) -> list[IndexEntry]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError, ValueError):
        return []  # importing the file says what is wrong with it, with its line
    consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
              for t in n.targets if isinstance(t, ast.Name)}

    def literal(node: ast.AST) -> Any:
        if isinstance(node, ast.Name) and node.id in consts:
            return consts[node.id]
        return ast.literal_eval(node)

    out: list[IndexEntry] = []
    by_call: dict[int, int] = {}  # id(the register call) → its entry's index in out
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("register", "add")):
            continue
        owner = node.func.value
        registry = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else None
        if registry not in INDEXED:
            continue
        try:
            name = literal(node.args[0])
        except (IndexError, ValueError, TypeError, SyntaxError):
            name = None
        if not isinstance(name, str):
            dynamic.add(registry)
            continue
        info: dict[str, Any] = {}
        if node.func.attr == "add" and len(node.args) > 1 and isinstance(node.args[1], ast.Call):
            try:
                info = {"args": [literal(a) for a in node.args[1].args],
                        "kwargs": {k.arg: literal(k.value) for k in node.args[1].keywords}}
            except (ValueError, TypeError, SyntaxError):
                info = {}
        by_call[id(node)] = len(out)
        out.append(IndexEntry(registry, name, path, info))
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for i in (by_call[id(d)] for d in cls.decorator_list if id(d) in by_call):
            info = {}
            for stmt in cls.body:
                for t in (stmt.targets if isinstance(stmt, ast.Assign) else ()):
                    if isinstance(t, ast.Name) and t.id in CLASS_INFO:
                        try:
                            info[t.id] = literal(stmt.value)
                        except (ValueError, TypeError, SyntaxError):
                            pass
            if info:
                out[i] = out[i]._replace(info=info)
    return out


def loaded() -> bool:
    """Whether :func:`load_all` has run."""
    return _state == "loaded"
