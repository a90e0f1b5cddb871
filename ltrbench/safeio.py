"""Writing into folders other people can write too: the shared cache and a shared ``--out``.

The trust model
---------------

A cache (``$LTRBENCH_CACHE``) or a results folder (``--out``) may be shared by a lab: several
users, each with write access to it, each running ltrbench under their own account. Someone who
can write such a folder can always change what is *in* it: the numbers of a cached stage (which
the manifest of :mod:`ltrbench.stages` catches when it was an accident, not when it was done on
purpose with a new manifest), or a result JSON under ``<out>/runs/`` (a table then shows it). What
they must not be able to do is turn ltrbench against the user who runs it:

* **run code**: nothing read from the cache or ``--out`` is unpickled or executed (tensors only,
  :mod:`ltrbench.train`; YAML without tags, :mod:`ltrbench.config`);
* **make it write or delete a file outside those folders**: every file ltrbench writes or
  appends to in a shared folder (a stage's ``<key>.lock`` and ``<key>.log``, its ``stage.json``,
  the fault counters, result JSONs, tables, the report) is opened here, never following a
  symbolic link at its last component: appended and locked files with ``O_NOFOLLOW`` (and only
  when they are a regular file with one link: a hard link to someone's file is refused too), whole
  files written to a private temporary file beside them and renamed over the name. A link planted
  at such a name is refused with one paragraph naming it (:class:`UnsafePathError`, exit 2): it is
  never followed, replaced or deleted. A folder ltrbench deletes files from (a stage's
  ``.partial`` folder, ``<out>/report/figures``) must be a real folder inside the one it owns
  (:func:`real_dir`), never a link to somewhere else;
* **make it read a file of the user's into what it writes**: the report embeds only the figures
  it drew itself (:mod:`ltrbench.report`), whatever the result files say, and escapes their text.

The folders themselves (the cache root, ``--out``) may be links: the user chose them. Folders below
them that ltrbench creates (``<cache>/<kind>/``, ``<out>/runs/``, ``<out>/report/``) are checked to
be real folders where ltrbench writes into them. ``flock`` on the lock file is advisory: a
co-user can hold a stage's lock and so delay a run (it prints whom it waits for), not change what
the run writes. Hard links: Linux's ``fs.protected_hardlinks`` (on by default) keeps a co-user
from hard-linking a file they cannot write themselves; the link-count check refuses the rest.

Written files follow the user's umask (a temporary file is created ``0600``; before the rename it
gets ``0666 & ~umask``), so collaborators sharing ``--out`` can read each other's results. A write
that fails (a full disk, a read-only folder) removes its temporary file and raises one paragraph
(:class:`StorageError`) naming the file and the reason.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from .errors import LtrBenchError


class UnsafePathError(LtrBenchError):
    """A name ltrbench writes to, or a folder it writes into or deletes from, is a symbolic link or
    otherwise not what ltrbench made there (a planted link in a shared folder)."""


class StorageError(LtrBenchError):
    """A file could not be written (a full disk, a read-only or missing folder)."""


#: The paragraph of a refused name: ``what`` it is, its ``path`` and what was ``found`` there.
PLANTED = ("Refusing to write {what} {path}: {found}. ltrbench never follows a link at a name it writes in a shared "
           "folder (someone who can write the folder could point it at one of your files). Delete {path} if you "
           "did not make it (check who did: `ls -l {path}`), then run again.")


def _planted(path: Path, what: str, found: str) -> UnsafePathError:
    return UnsafePathError(PLANTED.format(what=what, path=path, found=found))


def _storage(path: Path, what: str, e: OSError) -> StorageError:
    why = e.strerror or str(e)
    hint = {errno.ENOSPC: "the disk is full: free space there", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only", errno.EACCES: "this user may not write there",
            errno.EPERM: "this user may not write there"}.get(e.errno, "check the folder")
    return StorageError(f"Cannot write {what} {path}: {why} ({hint}). Nothing partial was left there; fix it "
                        "and run again, or pass another folder.")


def umask() -> int:
    """This process's umask (read without changing it where /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def refuse_link(path: Path, what: str = "file") -> None:
    """Raise :class:`UnsafePathError` when ``path`` is a symbolic link."""
    if os.path.islink(path):
        raise _planted(Path(path), what, f"it is a symbolic link to {os.readlink(path)!r}")


def refuse_links(named: list[tuple[str, Path]], where: str, then: str = "nothing was written") -> None:
    """One :class:`UnsafePathError` naming every one of ``named`` (what, path) that is a symbolic
    link; ``where`` is the shared folder they are in."""
    planted = [f"{p} ({what}, a link to {os.readlink(p)!r})" for what, p in named if os.path.islink(p)]
    if planted:
        raise UnsafePathError(
            f"Refusing to run: {len(planted)} name(s) that ltrbench writes in {where} are symbolic links: "
            + "; ".join(dict.fromkeys(planted)) + f". ltrbench never writes or deletes through a link in a shared "
            f"folder (whoever can write the folder could point one at your files); {then}. Delete them if you did "
            "not make them (`ls -l` shows who did), then run again.")


def _open_regular(path: Path, flags: int, what: str) -> int:
    """``os.open`` without following a link at the last component; only a regular file with one link."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            raise _planted(path, what, "it is a symbolic link") from None
        raise _storage(path, what, e) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        found = "it is not a regular file" if not stat.S_ISREG(st.st_mode) else \
            f"it is a hard link to a file with {st.st_nlink} names"
        raise _planted(path, what, found)
    if hasattr(os, "O_NONBLOCK"):
        os.set_blocking(fd, True)
    return fd


def open_append(path: Path, what: str = "log") -> IO[str]:
    """``path`` opened for appending text (created if missing), never through a link."""
    return os.fdopen(_open_regular(path, os.O_WRONLY | os.O_APPEND, what), "a", encoding="utf-8")


def open_update(path: Path, what: str = "lock file") -> IO[str]:
    """``path`` opened for reading and rewriting (created if missing), never through a link: a lock
    file, a counter."""
    return os.fdopen(_open_regular(path, os.O_RDWR, what), "r+", encoding="utf-8")


@contextlib.contextmanager
def _temp_beside(path: Path, what: str) -> Iterator[Path]:
    """A private temporary file beside ``path``, removed unless it was renamed over ``path``."""
    path = Path(path)
    refuse_link(path, what)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}.", suffix=".part")
    except OSError as e:
        raise _storage(path, what, e) from None
    os.close(fd)
    done = False
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        refuse_link(path, what)
        os.replace(tmp, path)
        done = True
    except OSError as e:
        raise _storage(path, what, e) from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_atomic(path: Path, data: str | bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` as a whole (temporary file + rename), with the umask's mode."""
    with _temp_beside(path, what) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_with(path: Path, writer: Callable[[Path], None], what: str = "file") -> Path:
    """Like :func:`write_atomic`, for a writer that writes a named file (``savefig``, ``to_csv``)."""
    with _temp_beside(path, what) as tmp:
        writer(tmp)
    return Path(path)


def real_dir(folder: Path, inside: Path, what: str = "folder", *, create: bool = False) -> Path:
    """``folder`` as a real folder (not a link) below ``inside`` (the folder ltrbench owns here),
    made first with ``create``; every folder between them is checked the same way."""
    folder, inside = Path(folder), Path(inside)
    try:
        rel = folder.relative_to(inside)
    except ValueError:
        raise UnsafePathError(f"{what} {folder} is not inside {inside}.") from None
    if create and not inside.exists():
        try:
            inside.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _storage(inside, what, e) from None
    cur = inside
    for part in rel.parts:
        cur = cur / part
        if os.path.islink(cur):
            raise _planted(cur, what, f"it is a symbolic link to {os.readlink(cur)!r}, not a folder of {inside}")
        if create and not cur.exists():
            try:
                cur.mkdir(exist_ok=True)
            except OSError as e:
                raise _storage(cur, what, e) from None
        if cur.exists() and not cur.is_dir():
            raise _planted(cur, what, "it is not a folder")
    return folder


def links_inside(folder: Path) -> list[Path]:
    """Every symbolic link below ``folder`` (none is followed)."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in [*dirs, *files]:
            p = Path(root) / name
            if p.is_symlink():
                found.append(p)
    return found
