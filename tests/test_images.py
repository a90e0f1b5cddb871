"""Images: check-data decodes every image as a run reads it, data.allow_corrupt replaces an unreadable
image only by one of its own class and says so in the result, and progress bars obey --quiet."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ltrbench
from conftest import TINY
from ltrbench.backbones import create_clip
from ltrbench.checkdata import check_data
from ltrbench.data.images import ImageListDataset, note_replacements, recording_replacements
from ltrbench.errors import DataError
from ltrbench.stages import artifact_dir
from test_real_data import make_places_lt


def _truncated_jpeg(path: Path) -> None:
    im = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8"))
    buf = io.BytesIO()
    im.save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def test_check_data_decodes_every_image_and_names_a_truncated_jpeg(tmp_path):
    (tmp_path / "root").mkdir()
    root = make_places_lt(tmp_path / "root")
    bad = "train/airfield/00000003.jpg"
    _truncated_jpeg(root / bad)
    with Image.open(root / bad) as im:
        im.verify()  # a structure check passes it: the old check-data said "0 unreadable"
    rep = check_data("places_lt", root, progress=False)
    assert not rep.usable and [p for p, _ in rep.splits["train"].corrupt] == [bad]
    assert "truncated" in rep.splits["train"].corrupt[0][1]
    assert f"unreadable: {bad}" in rep.render()
    assert check_data("places_lt", root, progress=False, sample=1).splits["train"].checked == 1


def _pairs_root(tmp_path: Path, labels: list[int], bad: set[int]) -> tuple[Path, list[tuple[str, int]]]:
    pairs = []
    for i, lab in enumerate(labels):
        rel = f"img/{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        if i in bad:
            (tmp_path / rel).write_bytes(b"not an image")
        else:
            Image.new("RGB", (4, 4), (i * 20, lab * 100, 0)).save(tmp_path / rel)
        pairs.append((rel, lab))
    return tmp_path, pairs


@pytest.mark.parametrize("preload", [False, True])
def test_allow_corrupt_replaces_an_image_by_the_next_readable_one_of_its_class(tmp_path, preload):
    #           0  1  2  3  4  5
    labels = [0, 1, 0, 1, 0, 1]
    root, pairs = _pairs_root(tmp_path, labels, bad={4, 3})
    with pytest.raises(DataError, match=r"img/[34].png cannot be read"):
        ImageListDataset(root, pairs, preload=preload)[4]
    ds = ImageListDataset(root, pairs, preload=preload, allow_corrupt=True)
    # 4 (class 0): after it in class 0 comes nothing, so round to 0; 3 (class 1): 5 comes next
    assert {p: r["replaced_by"] for p, r in ds.replaced.items()} == {"img/4.png": "img/0.png", "img/3.png": "img/5.png"}
    assert np.array_equal(np.asarray(ds[4][0]), np.asarray(ds[0][0])) and ds[4][1] == 0  # its own label, kept
    assert np.array_equal(np.asarray(ds[3][0]), np.asarray(ds[5][0])) and ds[3][1] == 1
    assert ds.replaced["img/3.png"]["label"] == 1 and ds.replaced["img/3.png"]["reason"]
    with recording_replacements() as seen:
        note_replacements(ds)
    assert set(seen) == {"img/3.png", "img/4.png"}


def test_allow_corrupt_fails_for_a_class_without_a_readable_image(tmp_path):
    root, pairs = _pairs_root(tmp_path, [0, 1, 1], bad={0})
    with pytest.raises(DataError, match="Every image of class 0"):
        ImageListDataset(root, pairs, allow_corrupt=True)


def test_the_result_lists_every_replaced_image(tmp_path, monkeypatch):
    (tmp_path / "root").mkdir()
    root = make_places_lt(tmp_path / "root")
    bad = "val/airplane_cabin/Places365_val_00011.jpg"  # a test image of class 1
    _truncated_jpeg(root / bad)
    torch.manual_seed(0)
    weights = tmp_path / "mini.pt"  # random mini-CLIP weights: no world, no pretraining needed
    torch.save(create_clip("mini-clip", None).state_dict(), weights)
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "cache"))
    over = [*TINY, "data.augment=light", "baseline.train.batch_size=4", f"backbone.pretrained={weights}",
            "data.allow_corrupt=true"]
    df = ltrbench.run(ltrbench.Request(["baseline"], "places_lt", data_root=str(root), backbone="mini-clip", overrides=over))
    (rec,) = df.records
    assert rec["replaced_images"] == [{"path": bad, "label": 1, "replaced_by": "val/airplane_cabin/Places365_val_00010.jpg",
                                       "reason": rec["replaced_images"][0]["reason"]}]
    assert "truncated" in rec["replaced_images"][0]["reason"]
    plan = ltrbench.plan(ltrbench.Request(["baseline"], "places_lt", data_root=str(root), backbone="mini-clip", overrides=over))
    test_feats = next(s for s in plan.stages if s.kind == "features" and s.config.split == "test")
    info = json.loads((artifact_dir(plan.cache, test_feats) / "stage.json").read_text())
    assert [r["path"] for r in info["replaced_images"]] == [bad]  # recorded by the stage that read it
    # The flag is not part of any key (it changes nothing where every image reads): a later run
    # without it reuses the stage, and its result still lists the replacement, never silently.
    again = ltrbench.run(ltrbench.Request(["baseline"], "places_lt", data_root=str(root), backbone="mini-clip", overrides=over[:-1]))
    assert again.execution["executed"] == 0
    assert again.records[0]["replaced_images"] == rec["replaced_images"]


@pytest.mark.parametrize("progress", [False, True])
def test_world_generation_shows_a_bar_only_with_progress(capfd, tmp_path, monkeypatch, progress):
    monkeypatch.setenv("LTRBENCH_CACHE", str(tmp_path / "cache"))
    ltrbench.plan(ltrbench.Request(["zeroshot"], "synthetic_lt", overrides=[*TINY, "world.num_captions=16"]), progress=progress)
    err = capfd.readouterr().err
    assert ("synthetic_lt" in err) == progress, err
