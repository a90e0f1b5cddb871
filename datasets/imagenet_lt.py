"""ImageNet-LT (Liu et al. 2019) read as the official VL-LTR code reads it (docs/algorithms.md#data-layout).

Root layout (VL-LTR README, "Data preparation"): ``ImageNet_LT_{train,val,test}.txt``,
``labels.txt``, ILSVRC-2012 images under ``train/<wnid>/`` and ``val/<wnid>/``, and the wiki corpus
under ``wiki/``. The val list holds 20 ImageNet *train* images per class (model selection); the
test list holds the 50 ImageNet val images per class and is the split the paper reports.
"""
from __future__ import annotations

import re
from pathlib import Path

from ltrbench.plugin import DATASETS, DataError, DatasetPlugin, LTDataset, Split, read_split_lists

LISTS = {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}
LISTS_FROM = (
    "the decoupling code, github.com/facebookresearch/classifier-balancing, folder data/ImageNet_LT/ "
    "(the lists were first released with OLTR, github.com/zhmiao/OpenLongTailRecognition-OLTR)"
)
LABELS_FROM = (
    "the VL-LTR data layout (github.com/ChangyaoTian/VL-LTR, README 'Data preparation'), which "
    "expects it next to the lists; its README does not link it, so look for it in the text-corpus "
    "release zip. Format: one '<wnid> <idx> <name>' line per class, multi-word names joined by '_'"
)
WIKI_FROM = "https://github.com/ChangyaoTian/VL-LTR/releases/download/text-corpus/imagenet.zip (extract as wiki/)"
IMAGES_FROM = (
    "ILSVRC-2012 (image-net.org): train images as train/<wnid>/*.JPEG, val images sorted into "
    "val/<wnid>/ folders (torchvision ImageFolder layout)"
)
_WNID = re.compile(r"n[0-9]{8}")


def read_labels(path: Path) -> tuple[list[str], list[str]]:
    """(class names, wnids) from ``labels.txt``, sorted by wnid string (docs/algorithms.md#class-names).

    As in the official VL-LTR code: the name is the LAST whitespace token with ``_`` turned into a
    space; the idx column is unused. Blank lines are skipped; fewer than three tokens or a repeated wnid is an error.
    """
    if not path.is_file():
        raise DataError(
            f"Class file not found: {path}. The imagenet_lt layout expects labels.txt in the data root; "
            f"it comes from {LABELS_FROM}."
        )
    entries: list[tuple[str, str]] = []
    first_line: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-download it.") from None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        toks = raw.split()
        if not toks:
            continue
        if len(toks) < 3:
            raise DataError(f"{path}: line {lineno}: expected '<wnid> <idx> <name>', found {raw.strip()!r}.")
        wnid = toks[0]
        if wnid in first_line:
            raise DataError(f"{path}: line {lineno}: wnid {wnid} already given on line {first_line[wnid]}.")
        first_line[wnid] = lineno
        entries.append((wnid, toks[-1].replace("_", " ")))
    if not entries:
        raise DataError(f"{path} holds no class; expected one '<wnid> <idx> <name>' line per class.")
    entries.sort(key=lambda e: e[0])
    return [n for _, n in entries], [w for w, _ in entries]


def wnid_mismatches(splits: dict[str, Split], wnids: list[str]) -> list[str]:
    """Lines whose ``<split>/<wnid>/`` folder is not the wnid labels.txt gives their label.

    ImageNet-LT labels follow sorted-wnid order (docs/algorithms.md#split-lists), so a disagreement
    means the lists and the class file (hence the class names and wiki files) do not belong together.
    """
    out: list[str] = []
    for split, pairs in splits.items():
        for rel, lab in pairs:
            parts = rel.split("/")
            if len(parts) > 2 and _WNID.fullmatch(parts[1]) and lab < len(wnids) and parts[1] != wnids[lab]:
                out.append(f"{LISTS[split]}: {rel} has label {lab}, which is {wnids[lab]} in labels.txt")
    return out


@DATASETS.register("imagenet_lt")
class ImageNetLT(DatasetPlugin):
    """ImageNet-LT: 1,000 classes, 115,846 train / 20,000 val / 50,000 test images; eval on test."""

    name = "imagenet_lt"
    env_var = "LTRBENCH_IMAGENET_LT_ROOT"
    optional_files = ("wiki/",)
    official_sizes = {"train": 115_846, "val": 20_000, "test": 50_000}
    official_classes = 1000

    def expected_files(self) -> list[tuple[str, str]]:
        return [
            *((f, LISTS_FROM) for f in LISTS.values()),
            ("labels.txt", LABELS_FROM),
            ("train/", IMAGES_FROM),
            ("val/", IMAGES_FROM),
            ("wiki/", WIKI_FROM),
        ]

    def load(self, root: Path, progress: bool = True, **options: object) -> LTDataset:
        self.no_options(options)
        root = Path(root)
        names, wnids = read_labels(root / "labels.txt")
        splits, _ = read_split_lists(
            root, LISTS, num_classes=len(names), dataset=self.name, published=LISTS_FROM
        )
        bad = wnid_mismatches(splits, wnids)
        if bad:
            raise DataError(
                f"{len(bad)} list lines disagree with {root / 'labels.txt'} (labels follow sorted-wnid "
                "order): " + "; ".join(bad[:3]) + ". Use the labels.txt that belongs to these lists."
            )
        return self.record(root, names, splits, wnids=tuple(wnids))

    def load_for_check(self, root: Path, **options: object) -> tuple[LTDataset | None, list[str]]:
        self.no_options(options)
        root = Path(root)
        problems: list[str] = []
        try:
            names, wnids = read_labels(root / "labels.txt")
        except DataError as e:
            names, wnids = None, []
            problems.append(str(e))
        splits, list_problems = read_split_lists(
            root, LISTS, num_classes=None, dataset=self.name, published=LISTS_FROM, lenient=True
        )
        problems += list_problems
        if names is None:  # no class file: count classes as max label + 1
            n = 1 + max((lab for pairs in splits.values() for _, lab in pairs), default=-1)
            names = [f"class {i}" for i in range(n)]
        else:
            bad = wnid_mismatches(splits, wnids)
            if bad:
                problems.append(f"{len(bad)} list lines disagree with labels.txt: " + "; ".join(bad[:3]))
        return self.record(root, names, splits, guessed=not wnids, wnids=tuple(wnids)), problems


