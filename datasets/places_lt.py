"""Places-LT (Liu et al. 2019) read as the official VL-LTR code reads it (docs/algorithms.md#data-layout).

Root layout (VL-LTR README, "Data preparation"): ``Places_LT_{train,val,test}.txt``, ``labels.txt``,
Places365-Standard images under ``train/<category>/`` and ``val/<category>/``, the wiki corpus under
``wiki/``. The val list holds 20 Places365 *train* images per class (model selection); the test list
holds 100 Places365 val images per class and is the split the paper reports.
"""
from __future__ import annotations

from pathlib import Path

from ltrbench.plugin import DATASETS, DataError, DatasetPlugin, LTDataset, read_split_lists

LISTS = {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}
LISTS_FROM = (
    "the decoupling code, github.com/facebookresearch/classifier-balancing, folder data/Places_LT/ "
    "(the lists were first released with OLTR, github.com/zhmiao/OpenLongTailRecognition-OLTR)"
)
LABELS_FROM = (
    "the VL-LTR data layout (github.com/ChangyaoTian/VL-LTR, README 'Data preparation'), which "
    "expects it next to the lists; its README does not link it, so look for it in the text-corpus "
    "release zip. Format: one line per class, the name first and the integer id last"
)
WIKI_FROM = "https://github.com/ChangyaoTian/VL-LTR/releases/download/text-corpus/places.zip (extract as wiki/)"
IMAGES_FROM = (
    "Places365-Standard, 'small images (256x256) with easy directory structure' "
    "(places2.csail.mit.edu/download.html): train/<category>/ and val/<category>/ folders"
)


def read_labels(path: Path) -> list[str]:
    """Class names from ``labels.txt`` in id order, exactly as the official VL-LTR code derives them
    (docs/algorithms.md#class-names).

    The name is the FIRST whitespace token with ``_`` and ``/`` each turned into a space (no further
    stripping, as in the official code); the id is the LAST token. The ids must be exactly 0..C-1 (the
    official code sorts by id and then indexes by position, so a gap or a repeat would silently shift
    every later class).
    """
    if not path.is_file():
        raise DataError(
            f"Class file not found: {path}. The places_lt layout expects labels.txt in the data root; "
            f"it comes from {LABELS_FROM}."
        )
    by_id: dict[int, tuple[str, int]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-download it.") from None
    for lineno, raw in enumerate(text.split("\n"), start=1):
        toks = raw.split()
        if not toks:
            continue
        if len(toks) < 2 or not toks[-1].isascii() or not toks[-1].isdigit():
            raise DataError(f"{path}: line {lineno}: expected '<name> ... <integer id>', found {raw.strip()!r}.")
        cid = int(toks[-1])
        if cid in by_id:
            raise DataError(f"{path}: line {lineno}: id {cid} already given on line {by_id[cid][1]}.")
        by_id[cid] = (toks[0].replace("_", " ").replace("/", " "), lineno)
    if not by_id:
        raise DataError(f"{path} holds no class; expected one '<name> <id>' line per class.")
    gaps = sorted(set(range(len(by_id))) - set(by_id))
    if gaps:
        raise DataError(
            f"{path}: the class ids must be 0..{len(by_id) - 1} without gaps; missing {gaps[:5]}"
            f"{' ...' if len(gaps) > 5 else ''}. Use the labels.txt that belongs to the Places-LT lists."
        )
    return [by_id[i][0] for i in range(len(by_id))]


@DATASETS.register("places_lt")
class PlacesLT(DatasetPlugin):
    """Places-LT: 365 classes, 62,500 train / 7,300 val / 36,500 test images; eval on test."""

    name = "places_lt"
    env_var = "LTRBENCH_PLACES_LT_ROOT"
    optional_files = ("wiki/",)
    official_sizes = {"train": 62_500, "val": 7_300, "test": 36_500}
    official_classes = 365

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
        names = read_labels(root / "labels.txt")
        splits, _ = read_split_lists(root, LISTS, num_classes=len(names), dataset=self.name, published=LISTS_FROM)
        return self.record(root, names, splits)

    def load_for_check(self, root: Path, **options: object) -> tuple[LTDataset | None, list[str]]:
        self.no_options(options)
        root = Path(root)
        problems: list[str] = []
        try:
            names: list[str] | None = read_labels(root / "labels.txt")
        except DataError as e:
            names = None
            problems.append(str(e))
        splits, list_problems = read_split_lists(
            root, LISTS, num_classes=None, dataset=self.name, published=LISTS_FROM, lenient=True
        )
        problems += list_problems
        guessed = names is None
        if names is None:  # no class file: count classes as max label + 1
            n = 1 + max((lab for pairs in splits.values() for _, lab in pairs), default=-1)
            names = [f"class {i}" for i in range(n)]
        return self.record(root, names, splits, guessed=guessed), problems


