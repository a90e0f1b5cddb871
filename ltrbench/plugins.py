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

import importlib.util
import sys
import traceback
import types
from pathlib import Path

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
