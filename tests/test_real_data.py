"""Real-format data: the published split lists, miniature roots in each real layout, bad inputs,
and the text corpus (docs/algorithms.md#data-layout). Fast: no images beyond a few generated 8x8 JPEGs."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltrbench.checkdata import check_data, dataset_plugin, shot_counts
from ltrbench.data.corpus import (
    PROMPT_TEMPLATES,
    build_corpus,
    class_sentences,
    corpus_stats,
    fill_prompts,
    parse_wiki,
    split_sentences,
    wiki_text,
)
from ltrbench.data.lists import find_duplicates, missing_images, read_list
from ltrbench.errors import DataError

from conftest import SPLITS  # tests/data/splits, unpacked


def _copy(names: list[str], dest: Path) -> Path:
    for n in names:
        shutil.copy(SPLITS / n, dest / n)
    return dest


# ----------------------------------------------------------------------------- the published lists


def test_places_lt_lists_only_reports_every_count(tmp_path: Path) -> None:
    root = _copy(["Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt"], tmp_path)
    rep = check_data("places_lt", root, progress=False)
    assert rep.num_classes == 365 and "max label + 1" in rep.classes_from
    assert rep.splits["train"].images == 62_500
    assert (rep.train_min, rep.train_max) == (5, 4_980)
    assert rep.shots["decoupling"] == (131, 163, 71)
    assert rep.shots["paper"] == (132, 156, 77)
    assert rep.splits["val"].images == 7_300 and rep.splits["test"].images == 36_500
    assert rep.images_absent and not rep.usable
    text = rep.render()
    assert "THE IMAGES ARE ABSENT" in text and "NOT USABLE" in text
    assert "[MISSING] labels.txt" in text and "131 / 163 / 71" in text and "132 / 156 / 77" in text


@pytest.mark.parametrize("name, per_class", [("ImageNet_LT_val.txt", 20), ("ImageNet_LT_test.txt", 50)])
def test_imagenet_lt_val_test_lists(tmp_path: Path, name: str, per_class: int) -> None:
    root = _copy([name], tmp_path)
    pairs = read_list(root / name, root, num_classes=1000)
    counts = np.bincount([lab for _, lab in pairs], minlength=1000)
    assert len(counts) == 1000 and (counts == per_class).all()
    assert not find_duplicates(pairs)


def test_shot_counts_boundaries() -> None:
    # 100 and 20 are the boundary values the two conventions put in different buckets.
    counts = np.array([101, 100, 99, 21, 20, 19])
    assert shot_counts(counts) == {"paper": (2, 2, 2), "decoupling": (1, 4, 1)}


# ----------------------------------------------------------------------------- miniature roots


def _jpeg(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), ((40 * k) % 256, 100, 200)).save(path, "JPEG")


def _write_list(path: Path, pairs: list[tuple[str, int]]) -> None:
    path.write_text("".join(f"{p} {lab}\n" for p, lab in pairs))


def _wiki(root: Path, n: int) -> None:
    (root / "wiki").mkdir()
    for k in range(n):
        (root / "wiki" / f"desc_{k}.txt").write_text(
            f"Class {k} is a thing. It lives in the U.S. and e.g. Canada.\n"
            "== Description ==\nIt is small. Dr. Who saw it?\n== References ==\nIgnored here.\n",
            encoding="utf-8",
        )


WNIDS = ["n00000040", "n00000010", "n00000030", "n00000020"]  # written unsorted on purpose
IN_NAMES = {"n00000010": "goldfish", "n00000020": "great_white_shark", "n00000030": "tench", "n00000040": "hen"}
TRAIN_COUNTS = [6, 3, 2, 1]


def make_imagenet_lt(root: Path) -> Path:
    (root / "labels.txt").write_text("".join(f"{w} {i} {IN_NAMES[w]}\n" for i, w in enumerate(WNIDS)))
    sorted_wnids = sorted(WNIDS)
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for lab, w in enumerate(sorted_wnids):
        lists["train"] += [(f"train/{w}/{w}_{i}.JPEG", lab) for i in range(TRAIN_COUNTS[lab])]
        lists["val"] += [(f"train/{w}/{w}_v{i}.JPEG", lab) for i in range(2)]
        lists["test"] += [(f"val/{w}/ILSVRC2012_val_{lab:04d}{i}.JPEG", lab) for i in range(3)]
    for split, pairs in lists.items():
        _write_list(root / f"ImageNet_LT_{split}.txt", pairs)
        for rel, lab in pairs:
            _jpeg(root / rel, lab)
    _wiki(root, 4)
    return root


PLACES_LABELS = "apartment_building/outdoor 2\nairfield 0\nairplane_cabin 1\n"


def make_places_lt(root: Path) -> Path:
    (root / "labels.txt").write_text(PLACES_LABELS)
    folders = ["airfield", "airplane_cabin", "apartment_building-outdoor"]
    lists: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    for lab, f in enumerate(folders):
        lists["train"] += [(f"train/{f}/{i:08d}.jpg", lab) for i in range(TRAIN_COUNTS[lab])]
        lists["val"] += [(f"train/{f}/{100 + i:08d}.jpg", lab) for i in range(2)]
        lists["test"] += [(f"val/{f}/Places365_val_{lab:04d}{i}.jpg", lab) for i in range(2)]
    for split, pairs in lists.items():
        _write_list(root / f"Places_LT_{split}.txt", pairs)
        for rel, lab in pairs:
            _jpeg(root / rel, lab)
    _wiki(root, 3)
    return root


INAT_SPECIES = ["Aa achalensis", "Abies concolor", "Abronia fragrans"]


def _inat_json(root: Path, name: str, labels: list[int], first_id: int) -> None:
    images, anns = [], []
    for i, lab in enumerate(labels):
        rel = f"train_val2018/Plantae/{lab}/{name}_{i:04d}.jpg"
        _jpeg(root / rel, lab)
        images.append({"id": first_id + i, "file_name": rel, "width": 8, "height": 8})
        anns.append({"id": first_id + i, "image_id": first_id + i, "category_id": lab})
    cats = [{"id": k, "name": f"obfuscated {k}"} for k in range(len(INAT_SPECIES))]
    (root / name).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def make_inat2018(root: Path) -> Path:
    cats = [{"id": k, "name": n, "kingdom": "Plantae"} for k, n in enumerate(INAT_SPECIES)]
    (root / "categories.json").write_text(json.dumps(cats))
    _inat_json(root, "train2018.json", [0] * 6 + [1] * 3 + [2] * 2, first_id=1000)
    _inat_json(root, "val2018.json", [0, 0, 0, 1, 1, 1, 2, 2, 2], first_id=5000)
    _wiki(root, 3)
    return root


LAYOUTS = {
    "imagenet_lt": (make_imagenet_lt, ["goldfish", "great white shark", "tench", "hen"], "test"),
    "places_lt": (make_places_lt, ["airfield", "airplane cabin", "apartment building outdoor"], "test"),
    "inat2018": (make_inat2018, INAT_SPECIES, "val"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_miniature_root_loads_and_checks_usable(tmp_path: Path, name: str) -> None:
    make, classnames, eval_split = LAYOUTS[name]
    root = make(tmp_path)
    ds = dataset_plugin(name).load(root)
    assert list(ds.classnames) == classnames  # sorted by wnid / by id, names derived as in the VL-LTR code
    assert ds.eval_split == eval_split and ds.wiki_dir == root / "wiki"
    assert list(ds.train_counts()[:3]) == TRAIN_COUNTS[:3]
    assert set(ds.splits) == ({"train", "val"} if name == "inat2018" else {"train", "val", "test"})
    rep = check_data(name, root, progress=False)
    assert rep.usable, rep.render()
    assert rep.wiki.with_file == len(classnames) and rep.wiki.stats is not None
    assert rep.wiki.stats["min"] == 5  # "Class k is a thing." / "It lives ... Canada." / "It is small." / "Dr." / "Who saw it?"
    corpus = ds.corpus()
    assert corpus[0][0] == f"a bad photo of a {classnames[0]} ." and len(corpus[0]) == 85


def test_inat_has_no_test_split(tmp_path: Path) -> None:
    ds = dataset_plugin("inat2018").load(make_inat2018(tmp_path))
    with pytest.raises(DataError, match="no split 'test'"):
        ds.split("test")


def test_check_data_without_labels_txt(tmp_path: Path) -> None:
    root = make_imagenet_lt(tmp_path)
    (root / "labels.txt").unlink()
    rep = check_data("imagenet_lt", root, progress=False)
    assert not rep.usable and rep.num_classes == 4 and "max label + 1" in rep.classes_from
    assert any(not f.found and f.name == "labels.txt" for f in rep.files)
    assert rep.wiki.stats is None  # no real class names: no corpus statistics


def test_imagenet_labels_must_match_wnid_folders(tmp_path: Path) -> None:
    root = make_imagenet_lt(tmp_path)
    (root / "labels.txt").write_text("".join(f"n9999999{i} {i} x\n" for i in range(4)))
    with pytest.raises(DataError, match="sorted-wnid"):
        dataset_plugin("imagenet_lt").load(root)


# ----------------------------------------------------------------------------- bad inputs


def _bad_list(tmp_path: Path, lines: str) -> Path:
    root = make_imagenet_lt(tmp_path)
    (root / "ImageNet_LT_train.txt").write_text(lines)
    return root


@pytest.mark.parametrize(
    "line, why",
    [
        ("train/n00000010/x.JPEG", "expected 2"),
        ("train/n00000010/x.JPEG 0 extra", "expected 2"),
        ("train/n00000010/x.JPEG zero", "not a non-negative integer"),
        ("train/n00000010/x.JPEG -1", "negative label"),
        ("train/n00000010/x.JPEG 4", "outside the class range 0..3"),
        ("/etc/passwd 0", "absolute"),
        ("../outside.JPEG 0", "climbs out"),
        ("train/../../outside.JPEG 0", "climbs out"),
    ],
)
def test_bad_list_line_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    root = _bad_list(tmp_path, f"train/n00000010/n00000010_0.JPEG 0\n\n{line}\n")
    with pytest.raises(DataError) as e:
        dataset_plugin("imagenet_lt").load(root)
    msg = str(e.value)
    assert "ImageNet_LT_train.txt" in msg and "line 3" in msg and why in msg


def test_check_data_reports_label_out_of_range(tmp_path: Path) -> None:
    root = make_places_lt(tmp_path)
    with open(root / "Places_LT_train.txt", "a") as f:
        f.write("train/airfield/00000000.jpg 3\n")
    rep = check_data("places_lt", root, progress=False)
    assert not rep.usable and rep.splits["train"].out_of_range == [("train/airfield/00000000.jpg", 3)]
    assert any("outside 0..2" in e for e in rep.errors)


def test_sampled_check(tmp_path: Path) -> None:
    root = make_imagenet_lt(tmp_path)
    rep = check_data("imagenet_lt", root, progress=False, sample=2)
    assert rep.usable and all(s.checked == 2 for s in rep.splits.values())
    assert "random sample of up to 2 per split" in rep.render()


def test_read_list_accepts_blank_lines_crlf_and_inner_dotdot(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_bytes(b"a/x.jpg 0\r\n\r\n  \na/../b/y.jpg   1\r\n")
    assert read_list(tmp_path / "l.txt", tmp_path, num_classes=2) == (("a/x.jpg", 0), ("a/../b/y.jpg", 1))


def test_missing_list_file_names_layout(tmp_path: Path) -> None:
    root = make_places_lt(tmp_path)
    (root / "Places_LT_val.txt").unlink()
    with pytest.raises(DataError) as e:
        dataset_plugin("places_lt").load(root)
    assert "Places_LT_val.txt" in str(e.value) and "places_lt layout" in str(e.value)
    assert "classifier-balancing" in str(e.value)


def test_missing_image_makes_root_unusable(tmp_path: Path) -> None:
    root = make_imagenet_lt(tmp_path)
    (root / "train/n00000020/n00000020_1.JPEG").unlink()
    rep = check_data("imagenet_lt", root, progress=False)
    assert not rep.usable and rep.splits["train"].missing == ["train/n00000020/n00000020_1.JPEG"]
    assert any("n00000020_1.JPEG" in e for e in rep.errors)
    assert missing_images(root, dataset_plugin("imagenet_lt").load(root).split("train"), sample=3, progress=False) in (
        [],
        ["train/n00000020/n00000020_1.JPEG"],
    )


def test_corrupt_image(tmp_path: Path) -> None:
    root = make_places_lt(tmp_path)
    (root / "val/airfield/Places365_val_00000.jpg").write_bytes(b"not a jpeg at all")
    rep = check_data("places_lt", root, progress=False)
    assert not rep.usable and [p for p, _ in rep.splits["test"].corrupt] == ["val/airfield/Places365_val_00000.jpg"]
    rep = check_data("places_lt", root, progress=False, allow_corrupt=True)
    assert rep.usable and len(rep.splits["test"].corrupt) == 1


def test_duplicate_lines(tmp_path: Path) -> None:
    pairs = (("a/x.jpg", 0), ("a/y.jpg", 1), ("a/./x.jpg", 0), ("a/y.jpg", 2))
    dups = find_duplicates(pairs)
    assert [(d.path, d.positions, d.conflicting) for d in dups] == [("a/x.jpg", (0, 2), False), ("a/y.jpg", (1, 3), True)]


def test_inat_json_counts_must_agree(tmp_path: Path) -> None:
    root = make_inat2018(tmp_path)
    data = json.loads((root / "val2018.json").read_text())
    data["annotations"].pop()
    (root / "val2018.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"val2018\.json: 9 images but 8 annotations"):
        dataset_plugin("inat2018").load(root)


def test_inat_json_ids_must_agree(tmp_path: Path) -> None:
    root = make_inat2018(tmp_path)
    data = json.loads((root / "train2018.json").read_text())
    data["annotations"][4], data["annotations"][5] = data["annotations"][5], data["annotations"][4]
    (root / "train2018.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"train2018\.json: index 4: images\[4\]\.id is 1004 but annotations\[4\]\.image_id is 1005"):
        dataset_plugin("inat2018").load(root)


def test_inat_label_out_of_range(tmp_path: Path) -> None:
    root = make_inat2018(tmp_path)
    data = json.loads((root / "val2018.json").read_text())
    data["annotations"][2]["category_id"] = 3
    (root / "val2018.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"val2018\.json: index 2: category_id 3 is outside the class range 0\.\.2"):
        dataset_plugin("inat2018").load(root)


def test_empty_wiki_file_is_an_error(tmp_path: Path) -> None:
    root = make_places_lt(tmp_path)
    (root / "wiki/desc_1.txt").write_text("  \n\n")
    with pytest.raises(DataError, match=r"desc_1\.txt is empty"):
        wiki_text(root / "wiki/desc_1.txt")
    with pytest.raises(DataError, match=r"desc_1\.txt is empty"):
        dataset_plugin("places_lt").load(root).corpus()
    rep = check_data("places_lt", root, progress=False)
    assert not rep.usable and any("desc_1.txt" in e for e in rep.errors)


def test_wiki_file_neither_utf8_nor_gbk(tmp_path: Path) -> None:
    path = tmp_path / "desc_0.txt"
    path.write_bytes(b"Fish \xff\xfe\xff swim.")
    with pytest.raises(DataError, match=r"desc_0\.txt is neither UTF-8 nor GBK"):
        wiki_text(path)


def test_wiki_file_gbk_fallback(tmp_path: Path) -> None:
    path = tmp_path / "desc_0.txt"
    path.write_bytes("金鱼是一种鱼。 Goldfish swim.".encode("gbk"))
    assert wiki_text(path).startswith("金鱼是一种鱼。")


# ----------------------------------------------------------------------------- sentences and corpus


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He moved to the U.S. He stayed.", ["He moved to the U.S. He stayed."]),
        ("Fish, e.g. carp. Next one.", ["Fish, e.g. carp.", "Next one."]),
        ("Dr. Smith came.", ["Dr.", "Smith came."]),
        ("Is it? Yes.", ["Is it?", "Yes."]),
        ("J. R. R. Tolkien wrote it.", ["J. R. R. Tolkien wrote it."]),
        ("It is 3.5 m long.", ["It is 3.5 m long."]),
        ("It ends.Then more.", ["It ends.", "Then more."]),
        ("one.two", ["one.two"]),
        ("First.\n\n  Second!  Third.", ["First.", "Second!  Third."]),
        ("   ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_prompt_templates() -> None:
    assert len(PROMPT_TEMPLATES) == 80
    prompts = fill_prompts("goldfish")
    assert "a photo of a goldfish ." in prompts and prompts[0] == "a bad photo of a goldfish ."
    assert split_sentences("\n".join(prompts)) == prompts  # the " ." keeps each prompt one sentence


def test_parse_wiki_sections() -> None:
    text = "Intro line.\n\n== History ==\nOld.\n=== Sub ===\nDeeper.\n== References ==\nx\n== History ==\nNew.\n"
    sec = parse_wiki(text)
    assert sec == {"summary": "Intro line.", "History": "New.", "Sub": "Deeper.", "References": "x"}


def test_class_sentences_prompts_first_no_separator(tmp_path: Path) -> None:
    path = tmp_path / "desc_0.txt"
    path.write_text("The goldfish is orange. It swims.\n== External links ==\nhttp://x.\n")
    sents = class_sentences("goldfish", path, "wiki_prompt")
    assert sents[:80] == fill_prompts("goldfish") and sents[80:] == ["The goldfish is orange.", "It swims."]
    # No separator (docs/algorithms.md#sentence-list step 2): a wiki text starting in lowercase merges into the
    # last prompt, as in the official VL-LTR code.
    path.write_text("goldfish are orange.")
    sents = class_sentences("goldfish", path, "wiki_prompt")
    assert len(sents) == 80 and sents[-1] == "a tattoo of the goldfish .goldfish are orange."
    assert class_sentences("goldfish", path, "prompt_only") == fill_prompts("goldfish")


def test_build_corpus_sources_and_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "desc_0.txt").write_text("Goldfish are orange.")
    with caplog.at_level(logging.WARNING, logger="ltrbench.data.corpus"):
        corpus = build_corpus(["goldfish", "tench"], tmp_path)
    assert corpus[0][-1] == "Goldfish are orange." and corpus[1] == fill_prompts("tench")
    assert len(caplog.records) == 1 and "1 (tench)" in caplog.text and "goldfish" not in caplog.text
    assert build_corpus(["goldfish"], tmp_path, source="prompt_only") == [fill_prompts("goldfish")]
    with pytest.raises(DataError, match="wiki_prompt, prompt_only"):
        build_corpus(["goldfish"], tmp_path, source="wiki")


def test_corpus_stats() -> None:
    corpus = [fill_prompts("a") + ["One two three."], fill_prompts("b") + ["Four.", "Five six."], fill_prompts("c")]
    st = corpus_stats(corpus)
    assert (st["min"], st["max"], st["median"], st["classes_without_wiki"]) == (0, 2, 1, 1)
    assert st["mean"] == pytest.approx(1.0)
    assert st["avg_tokens"] == pytest.approx((4 + 2 + 3) / 3)  # "one two three ." / "four ." / "five six ."
