"""Loads the plugin folders ``methods/`` and ``datasets/`` as ``ltrbench.methods`` / ``ltrbench.datasets``.

The folders sit at the repository's top level (the design card's layout) but must never be
importable as top-level ``methods`` or ``datasets`` (that would shadow Hugging Face's
``datasets``), so they hold no ``__init__.py`` and are loaded here by an explicit list: every
``*.py`` file not starting with ``_``, in name order. A wheel install maps them to
``ltrbench/methods`` and ``ltrbench/datasets`` (pyproject ``package-dir``); a source checkout or
an editable install finds them beside the package. Importing a plugin file registers it.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

_PKG = Path(__file__).resolve().parent
PLUGIN_FOLDERS = ("datasets", "methods")
_loaded = False


def _folder(name: str) -> Path:
    for cand in (_PKG / name, _PKG.parent / name):
        if cand.is_dir() and any(cand.glob("*.py")):
            return cand
    raise RuntimeError(f"ltrbench: plugin folder {name!r} not found beside {_PKG}")


def _load_folder(name: str) -> None:
    pkg_name = f"ltrbench.{name}"
    folder = _folder(name)
    pkg = sys.modules.get(pkg_name)
    if pkg is None:
        pkg = types.ModuleType(pkg_name, f"ltrbench {name} plugins, loaded from {folder}")
        pkg.__path__ = [str(folder)]  # type: ignore[attr-defined]
        sys.modules[pkg_name] = pkg
        setattr(sys.modules["ltrbench"], name, pkg)
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        mod_name = f"{pkg_name}.{path.stem}"
        if mod_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except BaseException:
            del sys.modules[mod_name]
            raise


def load_all() -> None:
    """Import every dataset and method plugin once (idempotent, cheap after the first call)."""
    global _loaded
    if _loaded:
        return
    import ltrbench  # noqa: F401  (the parent package must exist in sys.modules)

    from . import stage_kinds  # noqa: F401  (the core stage kinds register themselves)

    for name in PLUGIN_FOLDERS:
        _load_folder(name)
    _loaded = True
