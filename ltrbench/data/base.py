"""The record a dataset plugin returns, and the base class of dataset plugins.

A plugin (one file under ``datasets/``) reads its official files into an :class:`LTDataset`:
class names, the split lists as (relative image path, label) pairs, where the wiki corpus lies,
and which split the paper evaluates on. Everything downstream (training, features, corpus,
metrics) reads only this record, so the built-in world and the real benchmarks share one path.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError
from .corpus import build_corpus

Split = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class LTDataset:
    """A long-tailed dataset as read from disk.

    ``splits`` maps ``train``/``val``/``test`` to (path relative to ``root``, label) pairs.
    ``eval_split`` is the split the paper reports (``test`` for ImageNet-LT, Places-LT and the
    built-in world; ``val`` for iNaturalist 2018). ``val`` is for model selection.
    """

    name: str
    root: Path
    classnames: tuple[str, ...]
    splits: Mapping[str, Split]
    eval_split: str = "test"
    wiki_dir: Path | None = None
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"Dataset {self.name!r} has no split {name!r}; it has {', '.join(sorted(self.splits))}."
            )
        return self.splits[name]

    def labels(self, split: str) -> np.ndarray:
        return np.fromiter((lab for _, lab in self.split(split)), dtype=np.int64)

    def train_counts(self) -> np.ndarray:
        """Training images per class (length C), the quantity the shot buckets are defined on."""
        return np.bincount(self.labels("train"), minlength=self.num_classes)

    def corpus(self, source: str = "wiki_prompt") -> list[list[str]]:
        """Per-class sentence lists in the official order (prompts first, then wiki).

        ``source`` is ``wiki_prompt`` (default) or ``prompt_only`` (Table 10).
        """
        wiki = self.wiki_dir if source != "prompt_only" else None
        return build_corpus(list(self.classnames), wiki, source=source)

    def fingerprint(self) -> str:
        """A content hash of the class names and split lists: the dataset's part of a stage key."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        for n in self.classnames:
            h.update(n.encode() + b"\0")
        for split in sorted(self.splits):
            h.update(split.encode())
            for path, lab in self.splits[split]:
                h.update(f"{path} {lab}\n".encode())
        if self.wiki_dir is not None and Path(self.wiki_dir).is_dir():
            for p in sorted(Path(self.wiki_dir).glob("desc_*.txt")):
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}".encode())
        return h.hexdigest()[:16]


class DatasetPlugin:
    """Base class of dataset plugins: ``load(root)`` returns an :class:`LTDataset`.

    ``env_var`` names the environment variable that gives the data root when neither
    ``--data-root`` nor the ``data.root`` config key does.
    """

    name: ClassVar[str] = ""
    env_var: ClassVar[str | None] = None
    #: Entries of ``expected_files()`` a run can do without (e.g. ``wiki/``: prompts are the fallback).
    optional_files: ClassVar[tuple[str, ...]] = ()
    #: The published benchmark's sizes, for check-data's "is this the right version?" warnings:
    #: images per split and number of classes. Empty / None where there is no published version.
    official_sizes: ClassVar[Mapping[str, int]] = {}
    official_classes: ClassVar[int | None] = None

    def resolve_root(self, root: str | os.PathLike | None) -> Path:
        if not root and self.env_var and os.environ.get(self.env_var):
            root = os.environ[self.env_var]
        if root:
            path = Path(root).expanduser()
            if not path.is_dir():
                raise DataError(
                    f"Data root {path} of dataset {self.name!r} does not exist or is not a folder. Pass the folder "
                    f"holding its split lists with --data-root DIR (check it with `python run_bench.py check-data "
                    f"--dataset {self.name} --data-root DIR`)."
                )
            return path
        raise DataError(
            f"Dataset {self.name!r} needs a data root: pass --data-root DIR, set data.root in the config"
            + (f", or set the environment variable {self.env_var}." if self.env_var else ".")
            + f" Run `python run_bench.py check-data --dataset {self.name} --data-root DIR` to validate it."
        )

    def load(self, root: Path, progress: bool = True, **options: object) -> LTDataset:  # pragma: no cover
        """Read the data set under ``root`` (``options``: the plugin's :meth:`options`, if it has
        that method); ``progress``: whether long preparation (generating the built-in world) may
        show a bar."""
        raise NotImplementedError

    def no_options(self, options: Mapping[str, object]) -> None:
        """Real data sets take no load options; anything passed is a config mistake."""
        if options:
            raise ConfigError(f"Dataset {self.name!r} takes no options; got {', '.join(sorted(options))}.")

    def record(self, root: Path, names: Sequence[str], splits: Mapping[str, Split], *, eval_split: str = "test",
               guessed: bool = False, **extra: object) -> LTDataset:
        """The :class:`LTDataset` of a real root: ``wiki/`` when present; ``classes_guessed`` when the
        class file was missing and classes were counted from the labels (check-data only)."""
        wiki = Path(root) / "wiki"
        return LTDataset(name=self.name, root=Path(root), classnames=tuple(names), splits=dict(splits),
                         eval_split=eval_split, wiki_dir=wiki if wiki.is_dir() else None,
                         extra={**extra, **({"classes_guessed": True} if guessed else {})})

    def expected_files(self) -> Sequence[tuple[str, str]]:
        """(relative path, where it is published) for each file the root must hold; for check-data.

        A path ending in ``/`` is a folder.
        """
        return ()

    def load_for_check(self, root: Path, **options: object) -> tuple[LTDataset | None, list[str]]:
        """What check-data inspects: the dataset as far as it can be read, and the problems found.

        The default is :meth:`load` with its error as the one problem. Plugins override it to read
        past a missing or broken file (e.g. class count = max label + 1 without a class file) so
        that check-data can still report every count; labels are then not range-checked here.
        A record whose class names were made up (no class file) has ``extra["classes_guessed"]``.
        """
        try:
            return self.load(root, **options), []
        except DataError as e:
            return None, [str(e)]
