"""Full-content SHA-256 of files: artifact manifests (:mod:`ltrbench.stages`) and user files that
enter a stage key (a ``backbone.pretrained`` weights file).

A weights file is identified by the SHA-256 of all its bytes, so one overwritten at the same path
with other weights (even of the same size, differing only in the middle) gets a new key and its
stages are rebuilt. Hashing a 350 MB CLIP file takes about a second, so the hash is remembered by
(absolute path, size, mtime in ns): in this process, and in ``<cache>/file_hashes.json`` for later
runs. A file rewritten with its modification time set back to the old one (``touch -r``) would
keep its old hash: as for make and rsync, the mtime is trusted to change with the content.

Entries computed while a request is being validated are written to ``file_hashes.json`` only by
:func:`flush`, which ``ltrbench.plan`` calls once everything validated: a request that fails
validation leaves nothing in the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .paths import cache_root

_CHUNK = 1 << 22
DB_NAME = "file_hashes.json"

_memo: dict[str, dict[str, Any]] = {}
_pending: set[str] = set()


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of every byte of ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _db_path() -> Path:
    return cache_root() / DB_NAME


def _read_db() -> dict[str, Any]:
    try:
        db = json.loads(_db_path().read_text())
        return db if isinstance(db, dict) else {}
    except (OSError, ValueError):
        return {}


def _fresh(hit: Any, st: os.stat_result) -> bool:
    return isinstance(hit, dict) and hit.get("size") == st.st_size and hit.get("mtime_ns") == st.st_mtime_ns


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of ``path``'s content, hashed again only when its size or mtime changed."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = str(p)
    hit = _memo.get(key)
    if not _fresh(hit, st):
        hit = _read_db().get(key)
    if _fresh(hit, st):
        _memo[key] = hit
        return str(hit["sha256"])
    digest = sha256_file(p)
    _memo[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    _pending.add(key)
    return digest


def flush() -> None:
    """Write the hashes computed since the last flush into ``<cache>/file_hashes.json`` (atomic;
    entries of other processes are kept)."""
    if not _pending:
        return
    db = _read_db()
    db.update({k: _memo[k] for k in _pending})
    path = _db_path()
    from .safeio import StorageError, write_atomic  # (safeio imports errors only; here to keep this module light)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(db, indent=1, sort_keys=True), "the weights files' hashes")
    except (OSError, StorageError):  # a read-only cache: hashes are recomputed next time, nothing else is lost
        return
    _pending.clear()
