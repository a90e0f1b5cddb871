"""Split lists: reading ``<relative path> <int label>`` files and checking what they name.

Every dataset reads its image lists through :func:`read_list` (the real benchmarks' official lists,
docs/algorithms.md#split-lists, and the built-in world's generated ones), so one parser decides what a valid line
is and every error names the file, the line and what to do. The checks used by ``check-data``
(duplicates, images absent on disk, images that do not decode) live here too; they never raise for a
bad image, they return what they found.
"""
from __future__ import annotations

import os
import posixpath
import random
import re
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

from tqdm import tqdm

from ..errors import DataError
from .images import unreadable

Pair = tuple[str, int]
Split = tuple[Pair, ...]

# A label is plain ASCII digits: int() would also accept "+3", "3_000" and non-ASCII digits.
_UINT = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")
_MAX_REPORTED = 5  # bad lines quoted in one error message; the rest are counted


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be an image path relative to a data root, or ``None`` if it can.

    Rejected: absolute paths (``/x``, ``\\x``, ``C:...``) and paths that climb out of the root
    with ``..`` once normalised (``a/../../x``); ``a/../b`` is fine. The check is lexical: a
    symlink inside the root that points elsewhere is the user's choice and is followed.
    """
    if path.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(path):
        return f"the path {path!r} is absolute; list paths must be relative to the data root"
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return f"the path {path!r} climbs out of the data root (normalised: {norm!r})"
    if norm == ".":
        return f"the path {path!r} names the data root itself, not an image"
    return None


def read_list(
    path: Path,
    root: Path,
    *,
    num_classes: int | None = None,
    dataset: str | None = None,
    published: str | None = None,
) -> Split:
    """Read a split list of ``<relative path> <int label>`` lines (whitespace-separated).

    Blank lines are ignored; every other line must hold exactly two tokens (paths with spaces are
    not supported, as in the official readers, which use ``str.split()``). Labels are integers
    ``>= 0`` and, when ``num_classes`` is given, ``< num_classes``. Paths must stay inside
    ``root``. Returns the pairs in file order, paths exactly as written.

    ``dataset`` and ``published`` only improve the message for a missing file: which layout
    expects it and where it is published. Raises :class:`DataError` naming the file and the
    (1-based) line numbers of up to five bad lines.
    """
    path = Path(path)
    if not path.is_file():
        where = f" The {dataset} layout expects it at {path}." if dataset else ""
        pub = f" It is published with {published}." if published else ""
        raise DataError(f"Split list not found: {path}.{where}{pub} Put the file there or fix the data root.")
    text = _decode(path)
    pairs: list[Pair] = []
    problems: list[str] = []
    n_bad = 0
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        problem, pair = _parse_line(line, num_classes)
        if problem is None:
            pairs.append(pair)  # type: ignore[arg-type]
            continue
        n_bad += 1
        if len(problems) < _MAX_REPORTED:
            problems.append(f"  line {lineno}: {problem}")
    if n_bad:
        more = f"\n  ... and {n_bad - len(problems)} more bad lines" if n_bad > len(problems) else ""
        raise DataError(
            f"{path}: {n_bad} bad line{'s' if n_bad > 1 else ''} in a split list (each line must be "
            f"'<image path relative to {root}> <integer label>'):\n"
            + "\n".join(problems) + more
            + f"\nFix or re-download the file{f' ({published})' if published else ''}."
        )
    return tuple(pairs)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}: line {lineno} is not valid UTF-8 ({e.reason} at byte {e.start}). "
            "A split list is plain UTF-8 text; re-download or re-generate it."
        ) from None


def _parse_line(line: str, num_classes: int | None) -> tuple[str | None, Pair | None]:
    """(problem, None) for a bad line, (None, (path, label)) for a good one."""
    toks = line.split()
    if len(toks) != 2:
        return (
            f"expected 2 whitespace-separated fields, found {len(toks)}: {_clip(line)!r}",
            None,
        )
    rel, lab = toks
    if _NEGATIVE.fullmatch(lab):
        return f"negative label {lab} (labels are 0-based class indices)", None
    if not _UINT.fullmatch(lab):
        return f"the label {lab!r} is not a non-negative integer", None
    if len(lab) > 18:  # beyond any class count, and beyond int64 (the label arrays' type)
        return f"the label {_clip(lab, 40)} is too large to be a class index", None
    label = int(lab)
    if num_classes is not None and label >= num_classes:
        return (
            f"label {label} is outside the class range 0..{num_classes - 1} "
            f"({num_classes} classes); the list and the class file do not belong together",
            None,
        )
    problem = path_problem(rel)
    if problem:
        return problem, None
    return None, (rel, label)


def _clip(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


class Duplicate(NamedTuple):
    """An image path listed more than once in one split list."""

    path: str
    positions: tuple[int, ...]  # 0-based indices into the pairs
    labels: tuple[int, ...]

    @property
    def conflicting(self) -> bool:
        """True when the copies disagree on the label (worse than a plain repeat)."""
        return len(set(self.labels)) > 1


def find_duplicates(pairs: Sequence[Pair]) -> list[Duplicate]:
    """Paths listed more than once (compared after normalising ``a/./b`` to ``a/b``), in list order."""
    seen: dict[str, list[int]] = {}
    for i, (rel, _) in enumerate(pairs):
        seen.setdefault(posixpath.normpath(rel), []).append(i)
    return [
        Duplicate(pairs[idx[0]][0], tuple(idx), tuple(pairs[i][1] for i in idx))
        for idx in seen.values()
        if len(idx) > 1
    ]


def _chosen(pairs: Sequence[Pair], sample: int | None, seed: int) -> list[Pair]:
    """All pairs, or a seeded random sample of ``sample`` of them (in list order)."""
    if sample is None or sample >= len(pairs):
        return list(pairs)
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    idx = sorted(random.Random(seed).sample(range(len(pairs)), sample))
    return [pairs[i] for i in idx]


def missing_images(
    root: Path,
    pairs: Sequence[Pair],
    sample: int | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    desc: str = "checking images",
) -> list[str]:
    """Listed paths with no file under ``root``: all of them, or a seeded sample of ``sample``.

    Each parent folder is listed once (``os.listdir``) instead of one ``stat`` per image, which is
    what makes a full check of ImageNet-LT fast on network storage.
    """
    root = Path(root)
    chosen = _chosen(pairs, sample, seed)
    listing: dict[str, frozenset[str]] = {}
    missing: list[str] = []
    for rel, _ in tqdm(chosen, desc=desc, unit="img", disable=not progress, leave=False):
        parent, name = posixpath.split(posixpath.normpath(rel))
        names = listing.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(root / parent))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            listing[parent] = names
        if name not in names:
            missing.append(rel)
    return missing


def corrupt_images(
    root: Path,
    pairs: Sequence[Pair],
    sample: int | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    desc: str = "decoding images",
) -> list[tuple[str, str]]:
    """(path, reason) for each listed image that exists but cannot be decoded: all of them, or the
    same seeded sample of ``sample`` as :func:`missing_images`.

    Every image is fully decoded by :func:`ltrbench.data.images.open_rgb`, as training reads it (a
    structure check such as ``Image.verify`` passes a truncated JPEG that then fails the run).
    Absent files are skipped (:func:`missing_images` reports them).
    """
    chosen = _chosen(pairs, sample, seed)
    return [(chosen[i][0], why) for i, why in unreadable(Path(root), [rel for rel, _ in chosen], progress=progress,
                                                         desc=desc) if why != "absent"]


def read_split_lists(
    root: Path,
    files: dict[str, str],
    *,
    num_classes: int | None,
    dataset: str,
    published: str,
    lenient: bool = False,
) -> tuple[dict[str, Split], list[str]]:
    """Read several split lists at once: ``files`` maps split name to file name under ``root``.

    Strict (default): the first problem raises. Lenient (for ``check-data``): a split whose list is
    missing or malformed is left out and its error message returned, and labels are not checked
    against ``num_classes`` (the caller counts labels out of range itself).
    """
    splits: dict[str, Split] = {}
    problems: list[str] = []
    for split, name in files.items():
        try:
            splits[split] = read_list(
                Path(root) / name,
                root,
                num_classes=None if lenient else num_classes,
                dataset=dataset,
                published=published,
            )
        except DataError as e:
            if not lenient:
                raise
            problems.append(str(e))
    return splits, problems


def labels_out_of_range(pairs: Iterable[Pair], num_classes: int) -> list[tuple[str, int]]:
    """The pairs whose label is not in ``0..num_classes-1``."""
    return [(rel, lab) for rel, lab in pairs if not 0 <= lab < num_classes]
