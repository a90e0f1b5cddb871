"""Where ltrbench keeps things: the cache (``LTRBENCH_CACHE``, default the user's cache folder)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Stage artifacts, generated worlds and converted weights; never inside the repository."""
    env = os.environ.get("LTRBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "ltrbench"
