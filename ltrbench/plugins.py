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


def _package(name: str) -> types.ModuleType:
    """The synthetic package ``ltrbench.<name>`` whose path is the plugin folder."""
    pkg_name = f"ltrbench.{name}"
    pkg = sys.modules.get(pkg_name)
    if pkg is None:
        folder = _folder(name)
        pkg = types.ModuleType(pkg_name, f"ltrbench {name} plugins, loaded from {folder}")
        pkg.__path__ = [str(folder)]  # type: ignore[attr-defined]
        sys.modules[pkg_name] = pkg
        setattr(sys.modules["ltrbench"], name, pkg)
    return pkg


def load_plugin(folder: str, stem: str) -> None:
    """Import ``<folder>/<stem>.py`` once as ``ltrbench.<folder>.<stem>`` (registering its plugin)."""
    import ltrbench  # noqa: F401  (the parent package must exist in sys.modules)

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
    except BaseException:
        del sys.modules[mod_name]
        raise


def _load_folder(name: str) -> None:
    for path in sorted(_folder(name).glob("*.py")):
        if not path.name.startswith("_"):
            load_plugin(name, path.stem)


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
