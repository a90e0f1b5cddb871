"""The generic image-list dataset: (relative path, label) pairs under a root, read with PIL.

Every data set (real and built-in) goes through this class, and every image is decoded by
:func:`open_rgb` (``check-data`` decodes with it too, so what it passes a run can read).
``preload`` decodes all images once into memory (used for the small built-in world, where
per-epoch file reads would dominate).

An unreadable image is a :class:`~ltrbench.errors.DataError` naming the file, unless
``allow_corrupt`` is set. Then the list is decoded once up front (:func:`unreadable`, threaded),
and each unreadable image is replaced by the next readable image *of the same class* in list
order (wrapping round within the class), so its label stays true; a class with no readable image
left is an error. The replacements are a pure function of which files decode, so every process
(DataLoader workers, Ray workers) makes the same ones. Each is recorded: the stage engine collects
them with :func:`recording_replacements` into the stage's ``stage.json``, and the result record
of every run that read them lists them (``replaced_images``). Never silent.
"""
from __future__ import annotations

import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import DataError

log = logging.getLogger(__name__)


def open_rgb(path: Path) -> Image.Image:
    """The image at ``path`` fully decoded as RGB (a truncated file fails here, not later)."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError(
            f"Image {path} is listed but missing. Check the data root, or run "
            "`python run_bench.py check-data` to list every missing file."
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"Image {path} cannot be read ({e}). Replace it, or set data.allow_corrupt=true to skip it.") from None


def _decode_error(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.convert("RGB")
        return None
    except FileNotFoundError:
        return "absent"
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError...)
        return f"{type(e).__name__}: {e}"


def unreadable(root: Path, paths: Sequence[str], *, progress: bool | None = True,
               desc: str = "decoding images") -> list[tuple[int, str]]:
    """(index, reason) of each of ``paths`` (relative to ``root``) that :func:`open_rgb` cannot
    decode, absent files included (reason ``"absent"``). Decoding runs on a few threads (PIL
    releases the GIL while it decodes), in list order. ``progress=None`` leaves the bar to tqdm's
    defaults (``TQDM_DISABLE``, which ``--quiet`` sets)."""
    root = Path(root)
    workers = max(1, min(8, os.cpu_count() or 1))
    bar_opts = {} if progress is None else {"disable": not progress}
    bad: list[tuple[int, str]] = []
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda rel: _decode_error(root / rel), paths, chunksize=64)
        for i, why in enumerate(tqdm(results, total=len(paths), desc=desc, unit="img", leave=False, **bar_opts)):
            if why is not None:
                bad.append((i, why))
    return bad


# --------------------------------------------------------------------------- replacement record

_RECORD: dict[str, dict] | None = None


@contextlib.contextmanager
def recording_replacements() -> Iterator[dict[str, dict]]:
    """Collect every image replaced under ``allow_corrupt`` by the datasets read inside the block:
    ``{path: {"path", "label", "replaced_by", "reason"}}`` (the stage engine wraps each stage)."""
    global _RECORD
    prev, _RECORD = _RECORD, {}
    try:
        yield _RECORD
    finally:
        _RECORD = prev


def note_replacements(data: "ImageListDataset") -> None:
    """Tell the enclosing :func:`recording_replacements` block that ``data`` is being read."""
    if _RECORD is not None and data.replaced:
        _RECORD.update(data.replaced)


def _replacement_plan(paths: Sequence[str], labels: np.ndarray, bad: dict[int, str], root: Path) -> list[int]:
    """For each item the index actually read: itself, or for an unreadable one the next readable
    item of the same class in list order, wrapping round within the class."""
    source = list(range(len(paths)))
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        by_class.setdefault(lab, []).append(i)
    for i in sorted(bad):
        members = by_class[int(labels[i])]
        pos = members.index(i)
        ring = members[pos + 1:] + members[:pos]
        good = next((j for j in ring if j not in bad), None)
        if good is None:
            raise DataError(
                f"Every image of class {int(labels[i])} under {root} is unreadable (e.g. {paths[i]}: {bad[i]}), "
                "so data.allow_corrupt has nothing of that class to replace it with. Re-download the images; "
                "`python run_bench.py check-data` lists every unreadable file."
            )
        source[i] = good
    return source


class ImageListDataset(Dataset):
    def __init__(
        self,
        root: Path,
        pairs: Sequence[tuple[str, int]],
        transform: Callable | None = None,
        preload: bool = False,
        allow_corrupt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.paths = [p for p, _ in pairs]
        self.labels = np.asarray([lab for _, lab in pairs], dtype=np.int64)
        self.transform = transform
        self.allow_corrupt = allow_corrupt
        #: path → {"path", "label", "replaced_by", "reason"} for each image replaced (allow_corrupt)
        self.replaced: dict[str, dict] = {}
        self._source = list(range(len(self.paths)))
        self._cache: list[np.ndarray] | None = None
        if allow_corrupt:
            self._plan_replacements()
        if preload:
            self._cache = [np.asarray(self._load(i)) for i in range(len(self.paths))]

    def _plan_replacements(self) -> None:
        bad = dict(unreadable(self.root, self.paths, progress=None, desc="data.allow_corrupt: decoding images"))
        if not bad:
            return
        self._source = _replacement_plan(self.paths, self.labels, bad, self.root)
        for i, why in sorted(bad.items()):
            self.replaced[self.paths[i]] = {"path": self.paths[i], "label": int(self.labels[i]),
                                            "replaced_by": self.paths[self._source[i]], "reason": why}
        log.warning("data.allow_corrupt=true: %d unreadable images under %s are replaced by readable images of "
                    "their own class (e.g. %s by %s); every run that reads them lists them in its result "
                    "(replaced_images).", len(bad), self.root, self.paths[min(bad)],
                    self.paths[self._source[min(bad)]])

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, i: int) -> Image.Image:
        return open_rgb(self.root / self.paths[self._source[i]])

    def image(self, i: int) -> Image.Image:
        if self._cache is not None:
            return Image.fromarray(self._cache[i])
        return self._load(i)

    def __getitem__(self, i: int):
        img = self.image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])
