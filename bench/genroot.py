"""Generated data roots in the real layouts, at the real split sizes × a fraction.

Used by ``bench/scale.py`` (a full-size rehearsal of the real-data path), ``bench/pipeline.py``
(input-pipeline rates) and ``bench/gpu_check.py``. :func:`generate_root` writes, under one folder,
exactly what ``check-data`` and the dataset plugins read:

* split lists: the published Places-LT lists and the ImageNet-LT val/test and iNat val lists from
  ``../shared/data/splits`` where they are (paths and labels as published); where a list is not
  there (the ImageNet-LT and iNat training lists are too large to keep), per-class training counts
  are drawn through the published facts (total, smallest and largest class, the numbers of
  classes with more than 100 and fewer than 20 images; :data:`FACTS`), classes in random order.
  At a fraction F every class keeps max(1, round(n × F)) images of each split (the first ones of
  its list), so all classes stay and the long tail keeps its shape;
* class files (``labels.txt``; iNat's ``categories.json``, ``train2018.json``, ``val2018.json``)
  with made-up but well-formed names;
* a JPEG per listed image: procedural scenes (a smooth colour field, overlapping shapes in a
  class palette, texture and grain), shorter side 256–320, aspect 3:4 to 16:9, quality 90, about
  30–65 KB (median 44 KB) — Places365-Standard's small-image size; real ImageNet and iNat JPEGs
  are larger (``bench/pipeline.py --short-side`` measures the cost of that);
* a wiki file per class (``wiki/desc_<k>.txt``, summary + sections + a dropped References
  section) whose sentence counts follow the paper's Table 7 for the data set (log-normal through
  its median and mean, clipped to its min and max) at ~28 CLIP tokens per sentence.

Generation is deterministic (every image is seeded by its path), resumable (images are written to
``<name>.part`` and renamed; existing ones are skipped) and done once: ``genroot.json``, written
last, records what the folder holds, and a second call with the same request returns at once.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
#: The published split lists: $LTRBENCH_SPLITS (the tests point it at tests/data/splits), else ../shared/data/splits.
SPLITS = Path(os.environ.get("LTRBENCH_SPLITS") or REPO.parent / "shared" / "data" / "splits")
MARKER = "genroot.json"


@dataclass(frozen=True)
class Facts:
    """What is published about a data set's splits (docs/algorithms.md#split-lists, the paper's Table 7)."""

    classes: int
    train: int
    train_min: int
    train_max: int
    many: int  # classes with more than 100 training images (decoupling convention)
    few: int  # classes with fewer than 20
    val_per_class: int
    test_per_class: int | None  # None: no test split (iNat: val is the evaluation split)
    wiki: tuple[int, int, float, float]  # sentences per class: min, max, mean, median (Table 7)
    lists: dict[str, str]  # split → published list file in ../shared/data/splits


FACTS = {
    "places_lt": Facts(365, 62_500, 5, 4_980, 131, 71, 20, 100, (2, 610, 116, 77),
                       {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"}),
    "imagenet_lt": Facts(1000, 115_846, 5, 1_280, 385, 136, 20, 50, (1, 721, 127, 89),
                         {"val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"}),
    # many / few: 842 / 3,224 classes as reported by the papers that split iNat 2018 this way.
    "inat2018": Facts(8142, 437_513, 2, 1_000, 842, 3_224, 3, None, (1, 1774, 33, 17),
                      {"val": "iNaturalist18_val.txt"}),
}

# A small vocabulary for wiki sentences and made-up class names (no external word list).
WORDS = (
    "the of and a in is to was it for on as with by at from that are which this be or an its has have "
    "been were their also other they more one two three first after most some many can such when into "
    "than only used found known called large small long short common often near area region species "
    "building field river forest city house water light stone wood metal black white red green blue "
    "brown yellow grey dark bright open closed high low wide narrow old new early late ancient modern "
    "northern southern eastern western central coastal rural urban public private local national "
    "century period culture people family group type form structure surface colour pattern shape size "
    "season summer winter spring autumn rain snow wind sun night day morning evening island mountain "
    "valley lake sea coast plain desert garden park road bridge tower wall roof floor window door room "
    "hall market station school church temple museum harbour village street square shop kitchen animal "
    "bird fish insect plant tree flower leaf seed root branch fruit grass body head tail wing leg eye "
    "skin feather scale shell nest food prey habitat range population record history design material "
    "style use trade travel visitors workers children members leaders rulers artists scientists "
    "described named built grows lives feeds breeds covers reaches contains includes appears remains "
    "became produced developed introduced observed recorded considered regarded distinguished "
    "typically usually generally rarely widely mostly largely partly mainly slightly strongly"
).split()
SECTIONS = ("Description", "Distribution", "History", "Behaviour", "Uses")


def _rng(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


# --------------------------------------------------------------------------- split sizes


def training_counts(f: Facts, seed: int) -> np.ndarray:
    """Per-class training counts through the published facts, in random class order.

    Ranked counts are log-linear between anchors: the largest class, a free head point (solved
    so the total is right), 101 at the last of the ``many`` classes, 100 → 20 over the medium
    ones, 19 → the smallest over the ``few`` ones.
    """
    c = f.classes
    head = max(1, f.many // 8)
    anchors_r = [0, head, f.many - 1, f.many, c - f.few - 1, c - f.few, c - 1]

    def ranked(x: float) -> np.ndarray:
        anchors_n = [f.train_max, x, 101, 100, 20, 19, f.train_min]
        logs = np.interp(np.arange(c), anchors_r, np.log(anchors_n))
        return np.round(np.exp(logs)).astype(np.int64)

    lo, hi = 101.0, float(f.train_max)
    for _ in range(60):  # bisection on the free head point: the total grows with it
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if ranked(mid).sum() < f.train else (lo, mid)
    counts = ranked(math.sqrt(lo * hi))
    counts[1] += f.train - counts.sum()  # the rounding remainder to the second largest class
    return _rng("counts", seed).permutation(counts)


def _keep(pairs: Sequence[tuple[str, int]], fraction: float) -> list[tuple[str, int]]:
    """The first max(1, round(n × fraction)) items of each class, in list order."""
    by_class: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for p in pairs:
        by_class[p[1]].append(p)
    out = []
    for lab in sorted(by_class):
        items = by_class[lab]
        out += items[: max(1, round(len(items) * fraction))]
    return out


def _read_list(path: Path) -> list[tuple[str, int]]:
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rel, lab = line.rsplit(None, 1)
            out.append((rel, int(lab)))
    return out


def _word(rng: np.random.Generator) -> str:
    return str(WORDS[int(rng.integers(len(WORDS)))])


def _latin(rng: np.random.Generator) -> str:
    syll = ("ka", "lo", "mi", "ra", "te", "nu", "phy", "car", "don", "ell", "ia", "us", "um", "is", "or", "an")
    return "".join(syll[int(i)] for i in rng.integers(0, len(syll), int(rng.integers(2, 5))))


def split_lists(dataset: str, fraction: float, seed: int, splits_dir: Path = SPLITS, classes: int | None = None
                ) -> tuple[dict[str, list[tuple[str, int]]], list[str], dict]:
    """(split → (path, label) pairs at ``fraction``, class names, extra layout info) of ``dataset``;
    ``classes`` keeps the first N classes only (a test-sized root)."""
    f = FACTS[dataset]
    rng = _rng("lists", dataset, seed)
    published = {s: splits_dir / name for s, name in f.lists.items() if (splits_dir / name).is_file()}
    full: dict[str, list[tuple[str, int]]] = {s: _read_list(p) for s, p in published.items()}
    extra: dict = {"published": sorted(published)}
    if dataset == "places_lt":
        names = [f"scene{k}" for k in range(f.classes)]
        for pairs in full.values():
            for rel, lab in pairs:
                names[lab] = rel.split("/")[1].replace("-", "/")
        folders = [n.replace("/", "-") for n in names]
        if "train" not in full:
            full["train"] = [(f"train/{folders[k]}/{i:08d}.jpg", k)
                             for k, n in enumerate(training_counts(f, seed)) for i in range(n)]
        for split, per, where in (("val", f.val_per_class, "train"), ("test", f.test_per_class, "val")):
            if split not in full:
                full[split] = [(f"{where}/{folders[k]}/{split}_{i:08d}.jpg", k)
                               for k in range(f.classes) for i in range(per)]
    elif dataset == "imagenet_lt":
        wnids = [f"n{10_000_000 + 37 * k:08d}" for k in range(f.classes)]
        for pairs in full.values():
            for rel, lab in pairs:
                wnids[lab] = rel.split("/")[1]
        names = ["_".join(_word(rng) for _ in range(int(rng.integers(1, 3)))) for _ in range(f.classes)]
        extra["wnids"] = wnids
        full["train"] = [(f"train/{wnids[k]}/{wnids[k]}_{i}.JPEG", k)
                         for k, n in enumerate(training_counts(f, seed)) for i in range(n)]
        for split, per, where in (("val", f.val_per_class, "train"), ("test", f.test_per_class, "val")):
            if split not in full:
                full[split] = [(f"{where}/{wnids[k]}/{split}_{wnids[k]}_{i}.JPEG", k)
                               for k in range(f.classes) for i in range(per)]
    elif dataset == "inat2018":
        kingdoms = ["Plantae"] * f.classes
        for rel, lab in full.get("val", []):
            kingdoms[lab] = rel.split("/")[1]
        names = [f"{_latin(rng).capitalize()} {_latin(rng)}" for _ in range(f.classes)]
        extra["supercategories"] = kingdoms
        train = [(f"train_val2018/{kingdoms[k]}/{k}/{hashlib.md5(f'{k}/{i}'.encode()).hexdigest()}.jpg", k)
                 for k, n in enumerate(training_counts(f, seed)) for i in range(n)]
        full["train"] = [train[i] for i in rng.permutation(len(train))]  # JSON order is not class order
        if "val" not in full:
            full["val"] = [(f"train_val2018/{kingdoms[k]}/{k}/val{i}.jpg", k)
                           for k in range(f.classes) for i in range(f.val_per_class)]
    else:
        raise ValueError(f"no generator for {dataset!r}; choose one of {', '.join(FACTS)}")
    if classes is not None and classes < len(names):
        full = {s: [p for p in pairs if p[1] < classes] for s, pairs in full.items()}
        names = names[:classes]
        for k in ("wnids", "supercategories"):
            if k in extra:
                extra[k] = extra[k][:classes]
    lists = {s: _keep(pairs, fraction) if fraction < 1 else list(pairs) for s, pairs in full.items()}
    if dataset == "inat2018":  # keep JSON order (a random order) after cutting per class
        order = {p: i for i, p in enumerate(full["train"])}
        lists["train"].sort(key=order.__getitem__)
    extra["full_sizes"] = {s: len(p) for s, p in full.items()}
    return lists, names, extra


# --------------------------------------------------------------------------- images


def scene(rng: np.random.Generator, width: int, height: int, palette: np.ndarray) -> Image.Image:
    """A procedural photo-like image: a smooth colour field, shapes in the class palette, texture."""
    grid = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    side = max(width, height)
    for _ in range(int(rng.integers(6, 16))):
        colour = tuple(int(v) for v in np.clip(palette[int(rng.integers(len(palette)))] + rng.integers(-30, 30, 3), 0, 255))
        x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        box = [x0, y0, x0 + int(rng.integers(width // 10, width // 2)), y0 + int(rng.integers(height // 10, height // 2))]
        kind = int(rng.integers(4))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        elif kind == 2:
            draw.polygon([tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(int(rng.integers(3, 7)))],
                         fill=colour)
        else:
            draw.line([tuple(int(v) for v in rng.integers(0, side, 2)) for _ in range(int(rng.integers(2, 6)))],
                      fill=colour, width=int(rng.integers(2, 12)))
    a = np.asarray(img, dtype=np.float32)
    texture = rng.normal(128, 40, (max(1, height // 4), max(1, width // 4))).clip(0, 255).astype(np.uint8)
    texture = np.asarray(Image.fromarray(texture).resize((width, height), Image.BILINEAR), np.float32)
    a += (texture[..., None] - 128) * 0.6 + rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def image_size(rng: np.random.Generator, short_side: int = 256) -> tuple[int, int]:
    """(width, height): shorter side ``short_side`` to 1.25 × it, aspect 3:4 to 16:9 (log-uniform)."""
    s = short_side + int(rng.integers(0, short_side // 4 + 1))
    ar = float(np.exp(rng.uniform(np.log(3 / 4), np.log(16 / 9))))
    return (int(s * ar), s) if ar >= 1 else (s, int(s / ar))


def write_jpeg(path: Path, label: int, seed: int, short_side: int = 256) -> int:
    """Write one image atomically unless it exists; return its size in bytes."""
    if path.is_file():
        return path.stat().st_size
    rng = _rng("image", seed, path.name, label)
    palette = _rng("palette", seed, label).integers(0, 256, (5, 3))
    buf = io.BytesIO()
    scene(rng, *image_size(rng, short_side), palette).save(buf, "JPEG", quality=90)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_bytes(buf.getvalue())
    os.replace(part, path)
    return len(buf.getvalue())


def _write_chunk(args: tuple[str, list[tuple[str, int]], int, int]) -> int:
    root, items, seed, short_side = args
    return sum(write_jpeg(Path(root) / rel, lab, seed, short_side) for rel, lab in items)


def write_images(root: Path, items: Sequence[tuple[str, int]], seed: int, jobs: int = 1, short_side: int = 256,
                 progress: bool = True) -> int:
    """Every (relative path, label) image under ``root`` with ``jobs`` processes; total bytes."""
    chunks = [(str(root), list(items[i:i + 256]), seed, short_side) for i in range(0, len(items), 256)]
    total, done, t0 = 0, 0, time.time()
    if jobs <= 1:
        results: Iterable[int] = map(_write_chunk, chunks)
        pool = None
    else:
        pool = ProcessPoolExecutor(jobs)
        results = pool.map(_write_chunk, chunks)
    try:
        for (_, chunk, _, _), nbytes in zip(chunks, results):
            total += nbytes
            done += len(chunk)
            if progress and (done % 5120 < 256 or done == len(items)):
                rate = done / max(time.time() - t0, 1e-9)
                print(f"  images {done:,}/{len(items):,} ({rate:.0f}/s)", flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
    return total


# --------------------------------------------------------------------------- text


def _sentence(rng: np.random.Generator, name: str) -> str:
    words = [_word(rng) for _ in range(int(rng.integers(18, 38)))]  # ~28 CLIP tokens, Table 7's 26-29
    if rng.random() < 0.3:
        words.insert(int(rng.integers(len(words))), name)
    return " ".join(words).capitalize() + "."


def wiki_text(name: str, n: int, rng: np.random.Generator) -> str:
    """A wiki file of ``n`` sentences: a summary, a few sections, and a References section that
    the corpus reader drops (docs/algorithms.md#wiki-corpus)."""
    sents = [_sentence(rng, name) for _ in range(n)]
    cut = max(1, n // 3)
    parts = [" ".join(sents[:cut])]
    rest = sents[cut:]
    k = min(len(SECTIONS), max(1, len(rest) // 20)) if rest else 0
    for i in range(k):
        chunk = rest[i * len(rest) // k:(i + 1) * len(rest) // k]
        parts.append(f"== {SECTIONS[i]} ==\n" + "\n".join(" ".join(chunk[j:j + 4]) for j in range(0, len(chunk), 4)))
    parts.append("== References ==\n1. A reference that the corpus leaves out.")
    return "\n".join(parts) + "\n"


def sentence_counts(f: Facts, seed: int) -> np.ndarray:
    lo, hi, mean, median = f.wiki
    sigma = math.sqrt(2 * math.log(mean / median))
    n = np.exp(_rng("wiki", seed).normal(math.log(median), sigma, f.classes))
    n = np.clip(np.round(n), lo, hi).astype(int)
    n[0], n[-1] = lo, hi  # the published extremes
    return n


# --------------------------------------------------------------------------- the root


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_layout(dataset: str, root: Path, lists: dict[str, list[tuple[str, int]]], names: list[str],
                  extra: dict) -> None:
    if dataset in ("places_lt", "imagenet_lt"):
        prefix = "Places_LT" if dataset == "places_lt" else "ImageNet_LT"
        for split, pairs in lists.items():
            _write_text(root / f"{prefix}_{split}.txt", "".join(f"{p} {lab}\n" for p, lab in pairs))
        if dataset == "places_lt":
            _write_text(root / "labels.txt", "".join(f"{n.replace(' ', '_')} {k}\n" for k, n in enumerate(names)))
        else:
            _write_text(root / "labels.txt", "".join(f"{w} {k} {n}\n" for k, (w, n) in enumerate(zip(extra["wnids"], names))))
        return
    cats = [{"id": k, "name": n, "supercategory": s} for k, (n, s) in enumerate(zip(names, extra["supercategories"]))]
    _write_text(root / "categories.json", json.dumps(cats))
    first = 0
    for split, pairs in lists.items():
        images = [{"id": first + i, "file_name": p, "width": 0, "height": 0} for i, (p, _) in enumerate(pairs)]
        anns = [{"id": first + i, "image_id": first + i, "category_id": lab} for i, (_, lab) in enumerate(pairs)]
        _write_text(root / f"{split}2018.json", json.dumps({"images": images, "annotations": anns,
                                                          "categories": [{"id": c["id"]} for c in cats]}))
        first += len(pairs)


@dataclass
class RootInfo:
    dataset: str
    fraction: float
    seed: int
    images: dict[str, int]  # split → images
    full_sizes: dict[str, int]  # split → images at fraction 1
    classes: int
    jpeg_bytes: int
    wiki_sentences: int
    published_lists: list[str]
    seconds: float
    classes_kept: int | None = None  # --classes: the first N classes only

    def to_dict(self) -> dict:
        return asdict(self)


def generate_root(dataset: str, root: Path, fraction: float, *, seed: int = 0, jobs: int = 1,
                  progress: bool = True, splits_dir: Path = SPLITS, classes: int | None = None) -> RootInfo:
    """Generate (once) a root of ``dataset`` at ``fraction`` of its real split sizes (module doc);
    ``classes``: only the first N classes (a test-sized root)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must lie in (0, 1], got {fraction}")
    root = Path(root)
    marker = root / MARKER
    request = {"dataset": dataset, "fraction": fraction, "seed": seed, "classes_kept": classes}
    if marker.is_file():
        info = json.loads(marker.read_text())
        if {k: info.get(k) for k in request} != request:
            raise SystemExit(f"{root} holds a generated {info['dataset']} root at fraction {info['fraction']} "
                             f"(seed {info['seed']}, classes kept {info.get('classes_kept')}); pass another --root for {request}.")
        return RootInfo(**info)
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    lists, names, extra = split_lists(dataset, fraction, seed, splits_dir, classes)
    _write_layout(dataset, root, lists, names, extra)
    n_sent = sentence_counts(FACTS[dataset], seed)
    for k, name in enumerate(names):
        path = root / "wiki" / f"desc_{k}.txt"
        if not path.is_file():
            _write_text(path, wiki_text(name.split("/")[0].replace("_", " "), int(n_sent[k]), _rng("text", seed, k)))
    items = sorted({p for pairs in lists.values() for p in pairs})
    if progress:
        print(f"generating {len(items):,} JPEGs under {root} with {jobs} process(es)", flush=True)
    nbytes = write_images(root, items, seed, jobs, progress=progress)
    info = RootInfo(dataset, fraction, seed, {s: len(p) for s, p in lists.items()}, extra["full_sizes"], len(names),
                    nbytes, int(n_sent[:len(names)].sum()), extra["published"], round(time.time() - t0, 1), classes)
    _write_text(marker, json.dumps(info.to_dict(), indent=1))
    return info
