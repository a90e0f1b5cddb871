"""iNaturalist 2018 read as the official VL-LTR code reads it (docs/algorithms.md#inaturalist-2018-files).

Root layout (VL-LTR README, "Data preparation"): ``train2018.json``, ``val2018.json``,
``categories.json``, images under ``train_val2018/``, the wiki corpus under ``wiki/``.

In each json, ``images[i].file_name`` is paired BY POSITION with ``annotations[i].category_id`` (the
label), as the official VL-LTR code does; the decoupling code's converter asserts that the ids
agree, and so do we, with an error naming the file and the index. Class names come from
``categories.json`` (the species; the ``categories`` inside the competition jsons were obfuscated
until the June 2018 update).

iNat 2018 has no labelled test split: ``val`` (3 images per class) is both the evaluation split the
paper reports and the only split available for model selection. The record therefore has ``train``
and ``val`` only, with ``eval_split = "val"``; anything tuned on val is tuned on the reported split,
as in the paper.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ltrbench.plugin import DATASETS, DataError, DatasetPlugin, LTDataset, Split, path_problem

JSONS = {"train": "train2018.json", "val": "val2018.json"}
COMPETITION = "the iNaturalist 2018 competition, github.com/visipedia/inat_comp/tree/master/2018"
JSON_FROM = f"{COMPETITION} (train2018.json.tar.gz / val2018.json.tar.gz)"
CATEGORIES_FROM = (
    f"{COMPETITION}: categories.json.tar.gz, linked from the README's June 23rd 2018 update "
    "(un-obfuscated names); a list of {{'id', 'name', ...}} in id order"
)
IMAGES_FROM = f"{COMPETITION} (train_val2018.tar.gz, extracted as train_val2018/)"
WIKI_FROM = "https://github.com/ChangyaoTian/VL-LTR/releases/download/text-corpus/iNat.zip (extract as wiki/)"


def _load_json(path: Path, published: str) -> Any:
    if not path.is_file():
        raise DataError(
            f"File not found: {path}. The inat2018 layout expects it in the data root; it is published "
            f"with {published}."
        )
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}). Re-download or re-extract it ({published}).") from None


def read_categories(path: Path) -> list[str]:
    """Species names from ``categories.json``, a list in id order (entry i must have id i if it has one)."""
    cats = _load_json(path, CATEGORIES_FROM)
    if isinstance(cats, dict) and "categories" in cats:  # a whole competition json was given
        cats = cats["categories"]
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{path}: expected a non-empty JSON list of categories.")
    names: list[str] = []
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise DataError(f"{path}: entry {i} has no string 'name'.")
        if "id" in c and c["id"] != i:
            raise DataError(
                f"{path}: entry {i} has id {c['id']}; the list must be in id order 0..{len(cats) - 1} "
                "(C indexes it by position)."
            )
        names.append(c["name"])
    return names


def read_split_json(path: Path, num_classes: int | None) -> Split:
    """(file_name, category_id) pairs from a competition json, images and annotations by position."""
    data = _load_json(path, JSON_FROM)
    try:
        images, anns = data["images"], data["annotations"]
    except (KeyError, TypeError):
        raise DataError(f"{path}: expected a JSON object with 'images' and 'annotations' lists.") from None
    if len(images) != len(anns):
        raise DataError(
            f"{path}: {len(images)} images but {len(anns)} annotations; they are paired by position, "
            "so the counts must agree. Re-download the file."
        )
    pairs: list[tuple[str, int]] = []
    for i, (img, ann) in enumerate(zip(images, anns)):
        try:
            img_id, rel, label = img["id"], img["file_name"], ann["category_id"]
            ann_img = ann["image_id"] if "image_id" in ann else ann["id"]
        except (KeyError, TypeError):
            raise DataError(
                f"{path}: index {i}: an image needs 'id' and 'file_name', an annotation 'category_id' "
                "and 'image_id'."
            ) from None
        if img_id != ann_img:
            raise DataError(
                f"{path}: index {i}: images[{i}].id is {img_id} but annotations[{i}].image_id is {ann_img}; "
                "images and annotations are paired by position and must be in the same order."
            )
        if not isinstance(label, int) or label < 0 or (num_classes is not None and label >= num_classes):
            rng = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise DataError(
                f"{path}: index {i}: category_id {label!r} is outside the class range {rng} "
                "(categories.json); the json and the category file do not belong together."
            )
        problem = path_problem(str(rel))
        if problem:
            raise DataError(f"{path}: index {i}: {problem}.")
        pairs.append((str(rel), label))
    return tuple(pairs)


@DATASETS.register("inat2018")
class INat2018(DatasetPlugin):
    """iNaturalist 2018: 8,142 classes, 437,513 train / 24,426 val images; eval on val (no test)."""

    name = "inat2018"
    env_var = "LTRBENCH_INAT2018_ROOT"
    optional_files = ("wiki/",)
    official_sizes = {"train": 437_513, "val": 24_426}
    official_classes = 8142

    def expected_files(self) -> list[tuple[str, str]]:
        return [
            ("train2018.json", JSON_FROM),
            ("val2018.json", JSON_FROM),
            ("categories.json", CATEGORIES_FROM),
            ("train_val2018/", IMAGES_FROM),
            ("wiki/", WIKI_FROM),
        ]

    def load(self, root: Path, progress: bool = True, **options: object) -> LTDataset:
        self.no_options(options)
        root = Path(root)
        names = read_categories(root / "categories.json")
        splits = {split: read_split_json(root / f, len(names)) for split, f in JSONS.items()}
        return self.record(root, names, splits, eval_split="val")

    def load_for_check(self, root: Path, **options: object) -> tuple[LTDataset | None, list[str]]:
        self.no_options(options)
        root = Path(root)
        problems: list[str] = []
        try:
            names: list[str] | None = read_categories(root / "categories.json")
        except DataError as e:
            names = None
            problems.append(str(e))
        splits: dict[str, Split] = {}
        for split, f in JSONS.items():
            try:
                splits[split] = read_split_json(root / f, None)  # range checked by check-data
            except DataError as e:
                problems.append(str(e))
        guessed = names is None
        if names is None:  # no category file: count classes as max label + 1
            n = 1 + max((lab for pairs in splits.values() for _, lab in pairs), default=-1)
            names = [f"class {i}" for i in range(n)]
        return self.record(root, names, splits, eval_split="val", guessed=guessed), problems


