"""The built-in world generator: determinism, on-disk layout, the long tail, rare concepts, text."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ltrbench.datasets import _world as world
from ltrbench.datasets._world import WorldSpec, generate_world, train_counts

SMALL = WorldSpec(seed=3, num_classes=12, max_count=30, min_count=2, val_per_class=3, test_per_class=4,
                  num_captions=50)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _meta(folder: Path) -> dict:
    return json.loads((folder / "world.json").read_text())


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_world(tmp_path_factory.mktemp("world"), SMALL, progress=False)


def test_train_counts_follow_the_formula() -> None:
    spec = WorldSpec()
    n = train_counts(spec)
    i = np.arange(100)
    assert n.tolist() == np.round(300 * (4 / 300) ** (i / 99)).astype(int).tolist()
    assert n[0] == 300 and n[-1] == 4 and n.sum() == 6936
    assert np.all(np.diff(n) <= 0)


def test_spec_validation_and_dirname() -> None:
    with pytest.raises(ValueError):
        WorldSpec(num_classes=1)
    with pytest.raises(ValueError):
        WorldSpec(min_count=10, max_count=5)
    assert re.fullmatch(rf"synthetic_lt-v{world.WORLD_VERSION}-[0-9a-f]{{10}}", SMALL.dirname())
    assert WorldSpec().dirname() == WorldSpec().dirname()
    assert WorldSpec(seed=1).dirname() != WorldSpec().dirname()
    assert WorldSpec(image_size=48).dirname() != WorldSpec().dirname()


def test_generation_is_deterministic(small: Path, tmp_path: Path) -> None:
    again = generate_world(tmp_path, SMALL, progress=False)
    assert again != small and again.name == small.name
    assert _hashes(again) == _hashes(small)
    other = generate_world(tmp_path, replace(SMALL, seed=4), progress=False)
    assert _hashes(other)["train/c000/00000.png"] != _hashes(small)["train/c000/00000.png"]


def test_layout(small: Path) -> None:
    C, S = SMALL.num_classes, SMALL.image_size
    for name in ("DONE", "world.json", "labels.txt", "clip_pretrain.tsv", "SyntheticLT_train.txt",
                 "SyntheticLT_val.txt", "SyntheticLT_test.txt"):
        assert (small / name).is_file(), name
    labels = (small / "labels.txt").read_text().splitlines()
    assert len(labels) == C
    assert [int(line.split()[1]) for line in labels] == list(range(C))
    assert all(len(line.split()) == 2 for line in labels)  # names joined with "_"
    assert sorted(p.name for p in (small / "wiki").iterdir()) == sorted(f"desc_{k}.txt" for k in range(C))

    listed = set()
    expect = {"train": train_counts(SMALL), "val": [SMALL.val_per_class] * C, "test": [SMALL.test_per_class] * C}
    for split, per_class in expect.items():
        rows = [line.split(" ") for line in (small / f"SyntheticLT_{split}.txt").read_text().splitlines()]
        assert all(len(r) == 2 and re.fullmatch(rf"{split}/c\d{{3}}/\d{{5}}\.png", r[0]) for r in rows)
        labs = np.array([int(r[1]) for r in rows])
        assert np.all(np.diff(labs) >= 0)  # classes in order
        assert np.bincount(labs, minlength=C).tolist() == list(per_class)
        assert all(r[0].startswith(f"{split}/c{int(r[1]):03d}/") for r in rows)
        listed |= {r[0] for r in rows}
    captions = [line.split("\t") for line in (small / "clip_pretrain.tsv").read_text().splitlines()]
    assert len(captions) == SMALL.num_captions and all(len(c) == 2 and c[1] for c in captions)
    listed |= {c[0] for c in captions}

    on_disk = {str(p.relative_to(small)) for p in small.rglob("*.png")}
    assert on_disk == listed
    for rel in sorted(listed):
        with Image.open(small / rel) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (S, S)
            im.load()

    assert small.stat().st_mode & 0o777 == 0o755  # not mkdtemp's private 0o700
    meta = _meta(small)
    assert meta["spec"] == asdict(SMALL) and len(meta["classes"]) == C
    assert [c["count"] for c in meta["classes"]] == train_counts(SMALL).tolist()


def test_classes_names_and_rare_values(small: Path) -> None:
    meta = _meta(small)
    classes = meta["classes"]
    names = [c["name"] for c in classes]
    assert len(set(names)) == len(names)
    assert len({(c["shape"], c["colour"], c["pattern"]) for c in classes}) == len(classes)
    assert 0 < sum(not c["descriptive"] for c in classes) < len(classes)
    for c in classes:
        if c["descriptive"]:
            assert c["name"] == f"{c['colour']} {c['pattern']} {c['shape']}"
        else:
            assert re.fullmatch(r"[a-z]+", c["name"])
    _check_rare(classes, meta["rare_values"])


def test_default_design_keeps_rare_values_in_the_tail() -> None:
    classes, rare = world._design_classes(WorldSpec())  # the design alone: no images drawn
    assert len(rare["colour"]) == 2 and len(rare["shape"]) == 1
    _check_rare(classes, rare)
    assert sum(not c["descriptive"] for c in classes) == 50


def _check_rare(classes: list[dict], rare: dict[str, list[str]]) -> None:
    assert rare["colour"] or rare["shape"]
    uses = {v: 0 for v in rare["colour"] + rare["shape"]}
    for c in classes:
        hit = [v for v in (c["colour"], c["shape"]) if v in uses]
        assert c["rare"] == bool(hit)
        if hit:
            assert c["count"] <= world.TAIL_MAX, c
        for v in hit:
            uses[v] += 1
    assert all(n >= 2 for n in uses.values()), uses  # several few-shot classes show each one


def test_captions_never_name_opaque_classes(small: Path) -> None:
    meta = _meta(small)
    opaque = [c["name"] for c in meta["classes"] if not c["descriptive"]]
    text = (small / "clip_pretrain.tsv").read_text()
    for name in opaque:
        assert not re.search(rf"\b{name}\b", text), name
    # The same holds for a full-size corpus's vocabulary: invented names avoid every word we write.
    assert not set(opaque) & world._vocabulary()


def test_captions_cover_all_combinations() -> None:
    combos = [(s, c, p) for s in world.SHAPES for c in world.COLOURS for p in world.PATTERNS]
    captions = world._captions(world._rng(0, 99), combos)
    assert len(captions) == 320 and all(captions)
    assert not any(re.search(r"\ba [aeio]", c) for c in captions)  # articles fixed


def _parse_wiki(text: str) -> dict[str, str]:
    """The corpus parser of docs/algorithms.md#wiki-corpus, steps 1-3."""
    sections, current = {"summary": []}, "summary"
    for line in (x.strip() for x in text.splitlines()):
        if not line:
            continue
        if line.startswith("=="):
            current = line.strip("= ")
            sections[current] = []
        else:
            sections[current].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def test_wiki_text(small: Path) -> None:
    meta = _meta(small)
    skip = {"References", "External links"}
    for c in meta["classes"]:
        sections = _parse_wiki((small / "wiki" / f"desc_{c['label']}.txt").read_text(encoding="utf-8"))
        assert sections["summary"], c["name"]
        body = "\n".join(v for k, v in sections.items() if k not in skip)
        sentences = [s for s in re.split(r"(?<=\.)\s+", body) if s]
        assert 2 <= len(sentences) <= 40
        assert all(s[0].isupper() and s.endswith(".") for s in sentences)
        # The one link between an opaque name and its look: some sentence names it with its attributes.
        assert c["name"] in body
        words = {w for k in ("colour", "shape", "pattern") for w in _synonyms(k, c[k])}
        assert any(w in body for w in words)


def _synonyms(kind: str, value: str) -> tuple[str, ...]:
    table = {"colour": world.COLOUR_WORDS, "shape": world.SHAPE_WORDS, "pattern": world.PATTERN_WORDS}[kind]
    return table[value]


def test_second_call_returns_without_rewriting(small: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in [small, *small.rglob("*")]}
    assert generate_world(small.parent, SMALL, progress=False) == small
    assert {p: p.stat().st_mtime_ns for p in [small, *small.rglob("*")]} == before
    assert [p.name for p in small.parent.iterdir()] == [small.name]  # no temporary folder left


def test_folder_without_done_is_regenerated(small: Path, tmp_path: Path) -> None:
    folder = generate_world(tmp_path, SMALL, progress=False)
    (folder / "DONE").unlink()
    (folder / "train" / "c000" / "00000.png").unlink()
    (folder / "labels.txt").write_text("half written")
    assert generate_world(tmp_path, SMALL, progress=False) == folder
    assert _hashes(folder) == _hashes(small)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_crash_leaves_no_finished_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(world, "_caption_corpus", boom)
    with pytest.raises(RuntimeError):
        generate_world(tmp_path, SMALL, progress=False)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the shipped mini-CLIP weights


def test_the_shipped_mini_clip_weights_are_the_default_runs_and_intact():
    """datasets/miniclip/ holds the weights of the default run's clip_weights stage: the record's key
    is that stage's key (else the default run pretrains; rebuild with bench/miniclip_weights.py) and
    the file's SHA-256 is the recorded one."""
    from ltrbench.datasets import _miniclip as mc
    from ltrbench.fingerprints import file_sha256
    from ltrbench.resolve import Request, resolve
    from ltrbench.stage_kinds import clip_weights_stage

    record = json.loads(mc.SHIPPED_RECORD.read_text())
    (_, cfg), *_ = resolve(Request(["baseline"], "synthetic_lt"))
    assert record["key"] == clip_weights_stage(cfg).key, "stale: run python bench/miniclip_weights.py"
    assert file_sha256(mc.SHIPPED) == record["sha256"] and mc.SHIPPED.stat().st_size == record["bytes"]
    assert record["info"]["captions"] == asdict(WorldSpec())["num_captions"]


def test_clip_weights_copy_the_shipped_file_only_for_its_own_key(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from ltrbench.datasets import _miniclip as mc
    from ltrbench.errors import LtrBenchError

    record = json.loads(mc.SHIPPED_RECORD.read_text())
    ctx = SimpleNamespace(stage=SimpleNamespace(key=record["key"]))
    info = mc.MiniClipWeights().build(ctx, tmp_path / "weights.pt")
    assert info["source"] == "shipped" and info["sha256"] == record["sha256"]
    assert (tmp_path / "weights.pt").read_bytes() == mc.SHIPPED.read_bytes()
    assert mc.shipped_record(record["key"][::-1]) is None  # another world or recipe: pretrained
    monkeypatch.setenv(mc.FORCE_PRETRAIN, "1")
    assert mc.shipped_record(record["key"]) is None
    monkeypatch.delenv(mc.FORCE_PRETRAIN)
    damaged = tmp_path / "shipped.pt"
    damaged.write_bytes(b"not the weights")
    monkeypatch.setattr(mc, "SHIPPED", damaged)
    with pytest.raises(LtrBenchError, match="changed or damaged"):
        mc.copy_shipped(record, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out.copy").exists()
