"""``check-data``: validate a data root before hours of training, and say what to download.

:func:`check_data` reads a dataset through its plugin's lenient reader
(:meth:`DatasetPlugin.load_for_check`), so a root holding only the split lists, or missing its
class file, still gets every count. It reports the files found and missing (with where each is
published), classes and images per split, training images per class, many/medium/few class counts
under both conventions in use, listed images absent on disk or unreadable, labels out of range,
duplicate lines, and wiki coverage with corpus statistics (docs/algorithms.md#corpus-statistics, Table 7).
``CheckReport.usable`` is True only when nothing a run needs is missing or wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data.base import DatasetPlugin, LTDataset
from .data.corpus import class_sentences, corpus_stats, wiki_path
from .data.lists import corrupt_images, find_duplicates, labels_out_of_range, missing_images
from .errors import DataError, LtrBenchError
from .metrics import CONVENTIONS, bucket_counts
from .registry import DATASETS

_SHOWN = 10  # examples quoted per finding in render()


@dataclass
class FileStatus:
    name: str  # exactly as expected under the root; a trailing "/" marks a folder
    where: str  # where it is published
    found: bool
    optional: bool = False


@dataclass
class SplitReport:
    name: str
    images: int
    classes: int  # distinct labels present
    per_class_min: int
    per_class_max: int
    official_images: int | None = None
    out_of_range: list[tuple[str, int]] = field(default_factory=list)
    duplicates: int = 0  # extra copies of repeated paths
    conflicting_duplicates: int = 0  # repeated paths whose copies disagree on the label
    checked: int = 0  # images looked for on disk (all, or a sample)
    missing: list[str] = field(default_factory=list)
    corrupt: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class WikiReport:
    folder: Path | None
    with_file: int = 0
    without_file: list[str] = field(default_factory=list)  # "k (name)"
    bad_files: list[str] = field(default_factory=list)  # error messages
    stats: dict | None = None


@dataclass
class CheckReport:
    """What ``check-data`` found; ``render()`` gives the text the CLI prints."""

    dataset: str
    root: Path
    usable: bool
    files: list[FileStatus]
    num_classes: int
    classes_from: str
    splits: dict[str, SplitReport]
    train_min: int | None
    train_max: int | None
    shots: dict[str, tuple[int, int, int]]  # convention -> (many, medium, few) class counts
    wiki: WikiReport
    images_absent: bool
    sample: int | None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def render(self) -> str:
        out = [f"check-data: {self.dataset} at {self.root}"]
        verdict = "USABLE" if self.usable else f"NOT USABLE ({len(self.errors)} error{'s' * (len(self.errors) != 1)})"
        out += [f"Verdict: {verdict}", "", "Files:"]
        for f in self.files:
            tag = "ok" if f.found else ("missing, optional" if f.optional else "MISSING")
            out.append(f"  [{tag}] {f.name}" + ("" if f.found else f"\n      get it from: {f.where}"))
        out += ["", f"Classes: {self.num_classes:,} ({self.classes_from})", "", "Splits:"]
        for s in self.splits.values():
            official = (
                f" (official: {s.official_images:,})"
                if s.official_images is not None and s.official_images != s.images
                else ""
            )
            out.append(
                f"  {s.name:<5} {s.images:>9,} images{official}, {s.classes:,} classes, "
                f"{s.per_class_min:,}..{s.per_class_max:,} per class"
            )
        if self.train_min is not None:
            out.append(f"Training images per class: min {self.train_min:,}, max {self.train_max:,}")
            out.append("Many / medium / few classes (by training images):")
            for conv, (m, md, f) in self.shots.items():
                out.append(f"  {_convention_label(conv):<36} {m} / {md} / {f}")
        out += ["", "Images on disk:" + (f" (a random sample of up to {self.sample:,} per split)" if self.sample else "")]
        if self.images_absent:
            out.append(f"  THE IMAGES ARE ABSENT: none of the listed images checked exists under {self.root}.")
        for s in self.splits.values():
            line = f"  {s.name:<5} checked {s.checked:,}: {len(s.missing):,} absent, {len(s.corrupt):,} unreadable"
            out.append(line)
            if not self.images_absent:
                out += [f"      absent: {p}" for p in s.missing[:_SHOWN]]
            out += [f"      unreadable: {p} ({why})" for p, why in s.corrupt]  # each one: the files to replace
        out += ["", "Wiki corpus:"]
        w = self.wiki
        if w.folder is None:
            out.append("  no wiki/ folder: every class would use its 80 prompts only")
        else:
            out.append(
                f"  {w.with_file:,} with a desc file, {len(w.without_file):,} without, "
                f"{len(w.bad_files):,} unreadable"
            )
            if w.without_file:
                out.append("  without: " + ", ".join(w.without_file[:_SHOWN]) + (" ..." if len(w.without_file) > _SHOWN else ""))
            if w.stats:
                st = w.stats
                out.append(
                    f"  wiki sentences per class: min {st['min']}, max {st['max']}, mean {st['mean']:.1f}, "
                    f"median {st['median']:.1f}; {st['avg_tokens']:.1f} CLIP tokens per sentence "
                    "(paper Table 7: IN-LT 1/721/127/89/29, Places-LT 2/610/116/77/29, iNat 1/1774/33/17/26)"
                )
        for title, items in (("Errors", self.errors), ("Warnings", self.warnings)):
            if items:
                out += ["", f"{title}:"] + ["  - " + e.replace("\n", "\n    ") for e in items]
        return "\n".join(out)


def shot_counts(train_counts: np.ndarray) -> dict[str, tuple[int, int, int]]:
    """(many, medium, few) numbers of classes under each convention (ltrbench.metrics), from
    training images per class."""
    out = {}
    for conv in CONVENTIONS:
        n = bucket_counts(train_counts, conv)
        out[conv] = (n["many"], n["medium"], n["few"])
    return out


def _convention_label(conv: str) -> str:
    many, few, inclusive = CONVENTIONS[conv]
    ge, le = (">=", "<=") if inclusive else (">", "<")
    return f"{conv} (many {ge} {many}, few {le} {few}):"


def check_data(
    dataset: str | DatasetPlugin,
    root: Path | None,
    *,
    sample: int | None = None,
    progress: bool = True,
    allow_corrupt: bool = False,
) -> CheckReport:
    """Check a data root for ``dataset`` (a registered name or a plugin) and report what was found.

    Every listed image is looked for on disk and fully decoded (threaded, with a bar when
    ``progress``), as a run reads it; ``sample`` checks a seeded random sample of that many images
    per split instead of all. With ``allow_corrupt`` unreadable images are counted and listed
    but do not make the root unusable.
    """
    plugin = dataset_plugin(dataset)
    root = plugin.resolve_root(root)
    if not root.is_dir():
        raise DataError(f"Data root {root} does not exist or is not a folder.")
    errors: list[str] = []
    warnings: list[str] = []

    optional = set(plugin.optional_files)
    files = [
        FileStatus(name, where, (root / name).is_dir() if name.endswith("/") else (root / name).is_file(), name in optional)
        for name, where in plugin.expected_files()
    ]
    ds, problems = plugin.load_for_check(root)
    errors += problems
    if ds is None:
        ds = LTDataset(name=plugin.name, root=root, classnames=(), splits={})
    n_cls = ds.num_classes
    guessed = bool(ds.extra.get("classes_guessed"))
    classes_from = "max label + 1: the class file is missing" if guessed else "from the class file"
    if plugin.official_classes is not None and n_cls != plugin.official_classes and n_cls:
        warnings.append(f"{n_cls:,} classes, but the published {plugin.name} has {plugin.official_classes:,}.")

    splits: dict[str, SplitReport] = {}
    for name, pairs in ds.splits.items():
        splits[name] = _split_report(name, pairs, n_cls, plugin.official_sizes.get(name), errors, warnings)
    _check_overlap(ds, warnings)

    train_min = train_max = None
    shots: dict[str, tuple[int, int, int]] = {}
    if "train" in ds.splits and n_cls:
        counts = np.bincount([lab for _, lab in ds.splits["train"] if 0 <= lab < n_cls], minlength=n_cls)
        train_min, train_max = int(counts.min()), int(counts.max())
        shots = shot_counts(counts)
        if (counts == 0).any():
            warnings.append(f"{int((counts == 0).sum())} classes have no training image.")

    images_absent = _check_images(root, ds, splits, sample, progress, errors, allow_corrupt, warnings)
    if images_absent:
        wheres = sorted({f.where for f in files if f.name.endswith("/") and not f.optional})
        errors.insert(0, "The images are absent: no listed image exists under the root. Get them from: " + "; ".join(wheres))
    for f in files:
        if not f.found and not f.optional and f.name.endswith("/") and not images_absent:
            errors.append(f"Folder {f.name} is missing under {root}; get it from {f.where}.")

    wiki = _check_wiki(ds, sample, known_names=not guessed, errors=errors, warnings=warnings)
    return CheckReport(
        dataset=plugin.name,
        root=root,
        usable=not errors,
        files=files,
        num_classes=n_cls,
        classes_from=classes_from,
        splits=splits,
        train_min=train_min,
        train_max=train_max,
        shots=shots,
        wiki=wiki,
        images_absent=images_absent,
        sample=sample,
        errors=errors,
        warnings=warnings,
    )


def _split_report(
    name: str, pairs, n_cls: int, official: int | None, errors: list[str], warnings: list[str]
) -> SplitReport:
    labels = np.fromiter((lab for _, lab in pairs), dtype=np.int64, count=len(pairs))
    per_class = np.bincount(labels[(labels >= 0) & (labels < n_cls)], minlength=n_cls) if n_cls else np.zeros(0, int)
    present = per_class[per_class > 0]
    rep = SplitReport(
        name=name,
        images=len(pairs),
        classes=int((per_class > 0).sum()),
        per_class_min=int(present.min()) if present.size else 0,
        per_class_max=int(present.max()) if present.size else 0,
        official_images=official,
        out_of_range=labels_out_of_range(pairs, n_cls),
    )
    if rep.out_of_range:
        ex = ", ".join(f"{p} {lab}" for p, lab in rep.out_of_range[:3])
        errors.append(
            f"{name}: {len(rep.out_of_range):,} labels outside 0..{n_cls - 1} (e.g. {ex}); the list and the "
            "class file do not belong together."
        )
    dups = find_duplicates(pairs)
    rep.duplicates = sum(len(d.positions) - 1 for d in dups)
    rep.conflicting_duplicates = sum(d.conflicting for d in dups)
    if rep.conflicting_duplicates:
        ex = "; ".join([f"{d.path} (labels {sorted(set(d.labels))})" for d in dups if d.conflicting][:3])
        errors.append(f"{name}: {rep.conflicting_duplicates} images listed with different labels: {ex}.")
    elif dups:
        warnings.append(f"{name}: {rep.duplicates} duplicate lines (e.g. {dups[0].path}); the official lists have none.")
    if official is not None and official != len(pairs):
        warnings.append(
            f"{name}: {len(pairs):,} images, but the published list has {official:,}: is this the official version?"
        )
    return rep


def _check_overlap(ds: LTDataset, warnings: list[str]) -> None:
    sets = {name: {p for p, _ in pairs} for name, pairs in ds.splits.items()}
    names = sorted(sets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sets[a] & sets[b]
            if common:
                warnings.append(f"{len(common):,} images are listed in both {a} and {b} (e.g. {min(common)}).")


def _check_images(
    root: Path,
    ds: LTDataset,
    splits: dict[str, SplitReport],
    sample: int | None,
    progress: bool,
    errors: list[str],
    allow_corrupt: bool,
    warnings: list[str],
) -> bool:
    """Fill in absent and unreadable images per split; True when none of the checked images exists."""
    checked = found = 0
    for name, pairs in ds.splits.items():
        rep = splits[name]
        rep.checked = min(len(pairs), sample) if sample is not None else len(pairs)
        rep.missing = missing_images(root, pairs, sample, progress, desc=f"{name}: images on disk")
        checked += rep.checked
        found += rep.checked - len(rep.missing)
    if checked and not found:
        return True
    for name, pairs in ds.splits.items():
        rep = splits[name]
        if rep.missing:
            errors.append(
                f"{name}: {len(rep.missing):,} of {rep.checked:,} listed images checked are absent under "
                f"{root} (e.g. {rep.missing[0]})."
            )
        rep.corrupt = corrupt_images(root, pairs, sample, progress, desc=f"{name}: decoding images")
        if rep.corrupt:
            msg = (
                f"{name}: {len(rep.corrupt):,} images cannot be decoded "
                f"(e.g. {rep.corrupt[0][0]}: {rep.corrupt[0][1]})."
            )
            (warnings if allow_corrupt else errors).append(
                msg + (" Allowed by allow_corrupt." if allow_corrupt else " Re-download them, or pass allow_corrupt.")
            )
    return False


def _check_wiki(
    ds: LTDataset, sample: int | None, *, known_names: bool, errors: list[str], warnings: list[str]
) -> WikiReport:
    rep = WikiReport(folder=ds.wiki_dir)
    if ds.wiki_dir is None:
        warnings.append("No wiki/ folder: VL-LTR would train every class on its 80 prompts only.")
        return rep
    corpus: list[list[str]] = []
    for k, name in enumerate(ds.classnames):
        path = wiki_path(ds.wiki_dir, k)
        if not path.is_file():
            rep.without_file.append(f"{k} ({name})")
            continue
        rep.with_file += 1
        try:
            sents = class_sentences(name, path, "wiki_prompt")
        except LtrBenchError as e:
            rep.bad_files.append(str(e))
            continue
        corpus.append(sents)
    if rep.without_file:
        warnings.append(
            f"{len(rep.without_file):,} classes have no wiki file (wiki/desc_<k>.txt, k 0-based) and would "
            "use their prompts only."
        )
    errors += rep.bad_files
    if corpus and known_names:
        rep.stats = corpus_stats(corpus, token_sample=None if sample is None else max(sample, 2000))
    return rep


def dataset_plugin(dataset: str | DatasetPlugin) -> DatasetPlugin:
    """The plugin instance for a registered dataset name."""
    if isinstance(dataset, DatasetPlugin):
        return dataset
    obj = DATASETS.get(dataset)  # unknown name: RegistryError with "did you mean"
    return obj() if isinstance(obj, type) else obj
