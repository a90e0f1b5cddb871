"""The built-in world ``synthetic_lt``: a procedural long-tailed image world, generated to disk.

This module owns everything that makes the world: the class design (shape x colour x pattern
combinations, the long-tail counts, the rare attribute values kept to the tail, the names), the
vectorised image drawing, the per-class wiki text, the caption corpus for mini-CLIP pre-training,
and the atomic on-disk generation. It writes the same layout as the real benchmarks (split lists
``<relative path> <label>``, ``labels.txt``, ``wiki/desc_<k>.txt``), so the dataset plugin reads it
through the generic code. docs/datasets.md#the-prototype-it-follows gives the measured prototype this follows.

Everything is a pure function of :class:`WorldSpec`: each (split, class) batch of images draws from
its own ``PCG64([seed, stream, index])`` generator, so two generations are byte-identical.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ltrbench.plugin import ConfigError, DataError, refuse_link

log = logging.getLogger(__name__)

WORLD_VERSION = "1"  # bump when the generated content changes: it is part of the folder name

TAIL_MAX = 20  # rare attribute values live only in classes with at most this many training images

SHAPES = ("circle", "triangle", "square", "diamond", "cross", "star", "crescent", "bar")
PATTERNS = ("solid", "striped", "dotted", "checkered", "hollow")
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 20),
    "yellow": (235, 215, 30),
    "green": (40, 165, 55),
    "cyan": (30, 205, 215),
    "blue": (35, 65, 215),
    "purple": (135, 45, 185),
    "pink": (245, 125, 195),
}
COLOURS = tuple(PALETTE)
_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float32) / 255.0
# Distractors use only these simple shapes; drawing every shape for them would double the cost.
_DISTRACTOR_SHAPES = (0, 2, 3, 1)  # circle, square, diamond, triangle

# Random streams: one per purpose, so changing one part of the world leaves the others unchanged.
_S_DESIGN, _S_WIKI, _S_TRAIN, _S_VAL, _S_TEST, _S_CAPTION_IMG, _S_CAPTION_TXT = range(7)

# ---------------------------------------------------------------------------------------------
# Words. Synonyms are what make the text side non-trivial: the wiki and the captions rarely use
# the same word for an attribute, and a mini-CLIP has to learn that they mean the same look.
COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "amber", "tangerine"),
    "yellow": ("yellow", "golden", "lemon-yellow"),
    "green": ("green", "emerald", "leaf-green"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "azure", "cobalt"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "fuchsia"),
}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "round shape"),
    "triangle": ("triangle", "three-sided shape", "triangular figure"),
    "square": ("square", "four-sided block", "square shape"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "cross": ("cross", "plus sign", "plus-shaped figure"),
    "star": ("star", "five-pointed star", "star shape"),
    "crescent": ("crescent", "crescent moon", "sickle shape"),
    "bar": ("bar", "rod", "long rectangle"),
}
PATTERN_WORDS = {  # adjectives
    "solid": ("solid", "plain", "uniformly filled"),
    "striped": ("striped", "banded", "stripy"),
    "dotted": ("dotted", "spotted", "polka-dotted"),
    "checkered": ("checkered", "chequered", "checkerboard"),
    "hollow": ("hollow", "outlined", "empty"),
}
PATTERN_PHRASES = {  # phrases that follow a noun
    "solid": ("with a solid fill", "with no pattern", "filled with a single colour"),
    "striped": ("with stripes", "with a striped pattern", "covered in parallel bands"),
    "dotted": ("with dots", "covered in spots", "with a polka-dot pattern"),
    "checkered": ("with a checkerboard pattern", "with a chequered pattern", "patterned like a chessboard"),
    "hollow": ("drawn as an outline", "with a ring-shaped outline", "with an empty interior"),
}
_PEOPLE_FIRST = ("Maria", "Johan", "Aiko", "Pedro", "Helena", "Tomas", "Ingrid", "Samuel", "Leila", "Oskar")
_PEOPLE_LAST = ("Fenwick", "Albrecht", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Vasquez", "Hollis", "Brandt")
_PLACES = ("Lisbon", "Uppsala", "Kyoto", "Valparaiso", "Leiden", "Tbilisi", "Quebec", "Bergen", "Adelaide")

_CAPTIONS = {  # keyed by which attributes a caption names: c(olour), s(hape), p(attern)
    "c": ("something {c}", "a {c} object", "a photo of something {c}", "a mostly {c} picture"),
    "s": ("a {s}", "a photo of a {s}", "a picture of a {s}", "a {s} on a grey background"),
    "p": ("a {p} shape", "something {p}", "a shape {pp}", "a photo of a {p} thing"),
    "cs": ("a photo of a {c} {s}", "a {c} {s}", "a {s} in {c}", "a small {c} {s}"),
    "cp": ("something {p} and {c}", "a {c} {p} thing", "a {p} object, {c}", "a {c} shape {pp}"),
    "ps": ("a {p} {s}", "a {s} {pp}", "a photo of a {p} {s}", "a picture of a {s} {pp}"),
    "cps": ("a photo of a {c} {p} {s}", "a {p} {c} {s}", "a {c} {s} {pp}", "a picture of a {s}, {c} and {p}"),
}
# Shape is named most often: the prototype's mini-CLIP aligned shape worst
# (docs/datasets.md#the-prototype-it-follows).
_CAPTION_KINDS = ("cps", "cs", "ps", "s", "cp", "c", "p")
_CAPTION_P = (0.35, 0.15, 0.15, 0.10, 0.09, 0.08, 0.08)

_INFORMATIVE = (  # {n}: the class name; one sentence names one to three true attributes
    "The {n} is {c} in colour.", "Its colour is a deep {c}.", "Most specimens of the {n} are {c}.",
    "The {n} is easily recognised by its {c} body.", "The {n} has the outline of a {s}.",
    "In shape, the {n} resembles a {s}.", "Seen from the front, the {n} looks like a {s}.",
    "The surface of the {n} is {p}.", "A typical {n} is drawn {pp}.", "Its surface is {p}.",
    "The {n} is a {c} {s} {pp}.", "A typical {n} is a {p} {c} {s}.", "The {n} is a {p} {s}, usually {c}.",
    "Specimens are {c} and {p}.", "The {n} is best described as a {c} {s}.", "It is a {s} {pp}.",
)
_FULL = ("The {n} is a {c} {s} {pp}.", "A typical {n} is a {p} {c} {s}.", "The {n} is a {p} {s}, usually {c}.")
_PARTIAL = (  # partly informative or misleading: other colours/shapes/patterns ({oc}, {os}, {op})
    "The {n} is often found next to {oc} objects.", "Some observers have mistaken the {n} for a {os}.",
    "Faded specimens of the {n} can look almost {oc}.", "Its colour is said to lie between {c} and {oc}.",
    "Unlike the {os}, the {n} is rarely {op}.", "Early drawings showed the {n} as a {op} {os}.",
    "The {n} is sometimes grouped with {op} forms.", "In poor light the {n} appears {op}.",
    "The {n} is said to be related to the {other}.",
)
_NOISE = (
    "The {n} was first catalogued in {year} by {person}.", "A large collection of {n} specimens is kept in {place}.",
    "The name was coined in {year}.", "In {year}, an exhibition in {place} showed {num} specimens.",
    "{person} wrote the first monograph on the {n} in {year}.", "Its classification was revised in {year}.",
    "Several specimens were lost in the {place} flood of {year}.", "The {n} appears on a postage stamp issued in {year}.",
    "Interest in the {n} grew rapidly during the {decade}s.", "The {n} is the subject of a folk song from {place}.",
    "It has been studied at the University of {place} since {year}.",
    "A society devoted to the {n} was founded in {place} in {year}.",
)
_REFERENCES = (
    '* {last}, {initial}. ({year}). "On the {n}". Journal of Synthetic Forms. {num} (2): 11-{num2}.',
    "* {last}, {initial}. ({year}). A field guide to {c} figures. {place}: {last} Press.",
    "* {person} ({year}). Notes on the {s} and its relatives. Retrieved {year2}.",
)
_LINKS = (
    "* The {n} in the Synthetic Forms Database.", "* Gallery of {n} specimens at the {place} Museum of Figures.",
    "* {person}'s page on the {c} {s}.",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kl", "tr", "qu", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "o", "ai", "ou")
_CODAS = ("", "", "", "n", "l", "r", "s", "x", "m")


def _vocabulary() -> set[str]:
    """Every word the generator itself writes, so an invented name can never collide with one."""
    text = " ".join(
        itertools.chain(
            COLOURS, SHAPES, PATTERNS, *COLOUR_WORDS.values(), *SHAPE_WORDS.values(), *PATTERN_WORDS.values(),
            *PATTERN_PHRASES.values(), *_CAPTIONS.values(), _INFORMATIVE, _PARTIAL, _NOISE, _REFERENCES, _LINKS,
            _PEOPLE_FIRST, _PEOPLE_LAST, _PLACES,
        )
    )
    return set(re.findall(r"[a-z]+", text.lower()))


def _articles(text: str) -> str:
    """'a orange' -> 'an orange' (but 'a uniformly'): templates are written with 'a' throughout."""
    return re.sub(r"\b([Aa]) (?=[aeio]|u(?!ni))", r"\1n ", text)


# ---------------------------------------------------------------------------------------------
class WorldSpecError(ConfigError, ValueError):
    """An impossible world spec (a config error for the CLI, a ValueError for library callers)."""


@dataclass(frozen=True)
class WorldSpec:
    """What to generate; every field is part of the folder name, so a changed spec is a new world."""

    seed: int = 0
    num_classes: int = 100
    max_count: int = 300  # training images of the largest class
    min_count: int = 4  # ... of the smallest
    val_per_class: int = 20
    test_per_class: int = 50
    num_captions: int = 30000  # separate image-caption pairs for mini-CLIP pre-training
    image_size: int = 32

    def __post_init__(self) -> None:
        combos = len(SHAPES) * len(COLOURS) * len(PATTERNS)
        if not 2 <= self.num_classes <= combos:
            raise WorldSpecError(f"world.num_classes must be in 2..{combos}, got {self.num_classes}")
        if not 1 <= self.min_count <= self.max_count:
            raise WorldSpecError(f"world: need 1 <= min_count <= max_count, got {self.min_count}, {self.max_count}")
        if self.val_per_class < 0 or self.test_per_class < 0 or self.num_captions < 0:
            raise WorldSpecError("world.val_per_class, test_per_class and num_captions must be >= 0")
        if self.image_size < 16:
            raise WorldSpecError(f"world.image_size must be >= 16, got {self.image_size}")

    def dirname(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return f"synthetic_lt-v{WORLD_VERSION}-{hashlib.sha256(blob).hexdigest()[:10]}"


def train_counts(spec: WorldSpec) -> np.ndarray:
    """Training images per label: n_i = round(max * (min/max)^(i/(C-1))), decreasing with the label."""
    i = np.arange(spec.num_classes, dtype=np.float64)
    n = spec.max_count * (spec.min_count / spec.max_count) ** (i / (spec.num_classes - 1))
    return np.round(n).astype(np.int64)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, *stream]))


# ---------------------------------------------------------------------------------------------
# Class design
def _rare_plan(n_head: int, n_few: int) -> tuple[int, int]:
    """How many (colours, shapes) to keep tail-only: as many as the head still fits around and
    the tail can show at least twice each."""
    for n_col, n_shape in ((2, 1), (1, 1), (1, 0)):
        common = (len(COLOURS) - n_col) * (len(SHAPES) - n_shape) * len(PATTERNS)
        if n_head <= common and n_few >= 2 * (n_col + n_shape):
            return n_col, n_shape
    return 0, 0


def _design_classes(spec: WorldSpec) -> tuple[list[dict], dict[str, list[str]]]:
    """Each label's combination, name and count, and the attribute values kept to the tail.

    Labels are in decreasing count order, so the few-shot classes (<= TAIL_MAX images) are the
    last labels. Head and medium classes use only common values; the rare values (seeded: two
    colours and a shape at the default size) appear only in the tail, as in real long-tailed data.
    """
    rng = _rng(spec.seed, _S_DESIGN)
    counts = train_counts(spec)
    few = np.flatnonzero(counts <= TAIL_MAX)
    n_few, n_head = len(few), spec.num_classes - len(few)
    n_col, n_shape = _rare_plan(n_head, n_few)
    rare_c = {int(c) for c in rng.choice(len(COLOURS), n_col, replace=False)}
    rare_s = {int(s) for s in rng.choice(len(SHAPES), n_shape, replace=False)}
    combos = list(itertools.product(range(len(SHAPES)), range(len(COLOURS)), range(len(PATTERNS))))
    is_rare = [s in rare_s or c in rare_c for s, c, _ in combos]
    common = [k for k, r in enumerate(is_rare) if not r]
    rare = [k for k, r in enumerate(is_rare) if r]

    head = [common[k] for k in rng.choice(len(common), n_head, replace=False)]
    # Tail: at least two classes per rare value, then rare combos up to ~40% of the tail, so the
    # tail mixes classes that head classes teach (common values) with ones only text can teach.
    tail: list[int] = []
    for attr, values in ((1, sorted(rare_c)), (0, sorted(rare_s))):
        for v in values:
            cand = [k for k in rare if combos[k][attr] == v and k not in tail]
            tail += [cand[k] for k in rng.choice(len(cand), 2, replace=False)]
    left_rare = [k for k in rare if k not in tail]
    quota = min(max(len(tail), round(0.4 * n_few)), n_few, len(tail) + len(left_rare)) if rare_c or rare_s else 0
    tail += [left_rare[k] for k in rng.choice(len(left_rare), quota - len(tail), replace=False)]
    # The rest of the tail from unused common combos; only a tiny world could run out of them.
    left_common = [k for k in common if k not in head]
    n_rest = n_few - len(tail)
    if n_rest <= len(left_common):
        tail += [left_common[k] for k in rng.choice(len(left_common), n_rest, replace=False)]
    else:
        left_rare = [k for k in rare if k not in tail]
        tail += left_common + [left_rare[k] for k in rng.choice(len(left_rare), n_rest - len(left_common), replace=False)]
    tail = [tail[k] for k in rng.permutation(len(tail))]

    # Opaque names: half of each group (head, common tail, rare tail), so every kind of class
    # has both names that say what it looks like and names only the wiki can explain.
    labels = list(range(spec.num_classes))
    chosen = head + tail
    opaque: set[int] = set()
    groups = (labels[:n_head], [i for i in labels[n_head:] if not is_rare[chosen[i]]],
              [i for i in labels[n_head:] if is_rare[chosen[i]]])
    extra = bool(rng.random() < 0.5)  # odd groups round up and down in turn: half overall
    for group in groups:
        k = len(group) // 2 + (len(group) % 2 == 1 and extra)
        extra ^= len(group) % 2 == 1
        opaque |= {group[j] for j in rng.permutation(len(group))[:k]}
    words = _opaque_words(rng, len(opaque))

    classes = []
    for label, k in enumerate(chosen):
        s, c, p = combos[k]
        desc = label not in opaque
        name = f"{COLOURS[c]} {PATTERNS[p]} {SHAPES[s]}" if desc else words.pop()
        classes.append(dict(label=label, name=name, shape=SHAPES[s], colour=COLOURS[c], pattern=PATTERNS[p],
                            descriptive=desc, rare=is_rare[k], count=int(counts[label])))
    rare_values = {"colour": [COLOURS[c] for c in sorted(rare_c)], "shape": [SHAPES[s] for s in sorted(rare_s)]}
    return classes, rare_values


def _opaque_words(rng: np.random.Generator, n: int) -> list[str]:
    """Unique invented pronounceable words ("zorbel"), none of them a word the generator writes."""
    vocab, out = _vocabulary(), []
    while len(out) < n:
        syl = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
               for _ in range(2 + int(rng.random() < 0.4))]
        w = "".join(syl) + _CODAS[rng.integers(len(_CODAS))]
        if len(w) >= 5 and w not in vocab and w not in out:
            out.append(w)
    return out


# ---------------------------------------------------------------------------------------------
# Drawing. Coordinates are pixel centres; u, v are the object's own frame (v points down),
# scaled by its radius, so every shape is a closed-form inequality evaluated on a whole batch.
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.82
    if shape == "diamond":
        return au + av <= 1.05
    if shape == "triangle":  # apex up
        return (v <= 0.6) & (v >= 1.7320508 * au - 0.95)
    if shape == "cross":
        return ((au <= 0.32) & (av <= 0.95)) | ((av <= 0.32) & (au <= 0.95))
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.3)
    if shape == "crescent":  # a disc with a bite taken out on the right
        return (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + v * v > 0.72**2)
    if shape == "star":  # radius follows a triangle wave in angle: five points
        t = (np.arctan2(u, -v) * (5 / (2 * np.pi))) % 1.0
        return np.sqrt(u * u + v * v) <= 0.42 + 0.6 * np.abs(2 * t - 1)
    raise ValueError(shape)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 4-neighbour cross, for the outline of hollow shapes of any form."""
    for _ in range(steps):
        e = mask.copy()
        e[:, 1:] &= mask[:, :-1]
        e[:, :-1] &= mask[:, 1:]
        e[:, :, 1:] &= mask[:, :, :-1]
        e[:, :, :-1] &= mask[:, :, 1:]
        mask = e
    return mask


def _draw_batch(rng: np.random.Generator, shape: str, colour: str, pattern: str, n: int, size: int,
                distractor_colours: tuple[int, ...], distractor_shapes: tuple[int, ...]) -> np.ndarray:
    """n images of one (shape, colour, pattern) as uint8 (n, size, size, 3).

    Speed: shapes paint small integer layer ids into one uint8 map, and a single gather from a
    per-image colour table turns the map into pixels; per-layer float blending was 3x slower.
    """
    f32 = np.float32
    k = size / 32.0  # lengths below were tuned at 32 px
    g = np.arange(size, dtype=f32) + 0.5
    X, Y = g[None, None, :], g[None, :, None]

    def unif(lo: float, hi: float, shape: tuple[int, ...] = (n, 1, 1)) -> np.ndarray:
        return rng.uniform(lo, hi, shape).astype(f32)

    # Layer 0 is the background: a grey level with a linear gradient, plus a faint tint (table).
    bg = unif(0.2, 0.8) + unif(-0.3, 0.3) * (X / size - 0.5) + unif(-0.3, 0.3) * (Y / size - 0.5)
    table = np.zeros((n, 3, 6), f32)  # colour of layer 0..5 per image and channel
    table[:, :, 0] = rng.normal(0.0, 0.02, (n, 3))
    layer = np.zeros((n, size, size), np.uint8)

    # Layers 1-3: 0-3 small distractors of other colours, behind the object.
    ci = COLOURS.index(colour)
    others = np.array([c for c in distractor_colours if c != ci] or [c for c in range(len(COLOURS)) if c != ci])
    n_distract = rng.integers(0, 4, n)
    for j in range(3):
        cx, cy, r = unif(0, size), unif(0, size), unif(1.5, 3.5) * k
        u, v = (X - cx) / r, (Y - cy) / r
        kinds = rng.choice(np.array(distractor_shapes), n)
        table[:, :, 1 + j] = _RGB[rng.choice(others, n)] * unif(0.8, 1.1, (n, 1))
        m = np.zeros((n, size, size), bool)
        for s in np.unique(kinds):
            sel = kinds == s
            m[sel] = _shape_mask(SHAPES[s], u[sel], v[sel])
        m &= (n_distract > j)[:, None, None]
        layer[m] = 1 + j

    # Layers 4 (colour) and 5 (the pattern's second tone): the object, with random radius,
    # position (it may touch the border) and rotation within +-20 degrees.
    r = unif(0.25, 0.40) * size
    cx = 0.75 * r + (size - 1.5 * r) * unif(0, 1)
    cy = 0.75 * r + (size - 1.5 * r) * unif(0, 1)
    th = np.deg2rad(unif(-20, 20))
    cos, sin = np.cos(th), np.sin(th)
    dx, dy = X - cx, Y - cy
    up, vp = dx * cos + dy * sin, dy * cos - dx * sin  # object frame, in pixels
    mask = _shape_mask(shape, up / r, vp / r)

    def frac(x: np.ndarray) -> np.ndarray:  # x % 1, but several times faster for float32
        return x - np.floor(x)

    if pattern == "solid" or pattern == "hollow":
        on = mask
        if pattern == "hollow":
            mask = on = mask & ~_erode(mask, max(1, round(2 * k)))
    elif pattern == "striped":
        a, period = unif(0, np.pi), unif(3.5, 5.5) * k
        on = frac((up * np.cos(a) + vp * np.sin(a)) / period + unif(0, 1)) < 0.5
    elif pattern == "dotted":  # dots of the second tone on the colour, so the colour dominates
        period = unif(4.5, 6.5) * k
        a = frac(up / period + unif(0, 1)) - 0.5
        b = frac(vp / period + unif(0, 1)) - 0.5
        on = a * a + b * b >= unif(0.22, 0.30) ** 2
    elif pattern == "checkered":
        period = unif(2.5, 4.0) * k
        on = (np.floor(up / period + unif(0, 1)) + np.floor(vp / period + unif(0, 1))) % 2 == 0
    else:
        raise ValueError(pattern)
    layer[mask] = 5
    layer[mask & on] = 4

    # Colour jitter stays moderate so that neighbouring hues (red/orange/pink) stay apart.
    col = np.clip(_RGB[ci] * unif(0.82, 1.12, (n, 1)) + rng.normal(0, 0.035, (n, 3)).astype(f32), 0, 1)
    light = col * 0.35 + 0.65 * unif(0.85, 1.0, (n, 1))
    table[:, :, 4] = col
    table[:, :, 5] = np.where(rng.random((n, 1)) < 0.7, light, col * 0.3)

    offset = (np.arange(n * 3, dtype=np.intp) * 6).reshape(n, 3, 1, 1)
    img = np.take(table.reshape(-1), layer[:, None] + offset)  # (n, 3, size, size)
    img += (bg * (layer == 0))[:, None]
    # Pixel noise: uniform (3x cheaper to draw than normal), sd 0.01-0.05 per image.
    img += (rng.random(img.shape, dtype=f32) - 0.5) * unif(0.035, 0.17, (n, 1, 1, 1))
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1))


# zlib level 0 (stored): the pixel noise leaves deflate only ~12% to gain on these images, while
# its set-up costs ~80 us per image, as much as drawing the image.
_PNG_LEVEL = 0


def _png(arr: np.ndarray) -> bytes:
    """A minimal RGB8 PNG (IHDR, one IDAT, IEND; filter 0 on every row).

    Pillow's encoder spends ~0.2 ms of set-up per 32 px image, more than drawing it; this writes
    the same standard format in ~10 us, with no timestamps, so equal pixels always give equal
    bytes. Pillow and every other PNG reader open it.
    """
    h, w, _ = arr.shape
    raw = np.zeros((h, w * 3 + 1), np.uint8)
    raw[:, 1:] = arr.reshape(h, w * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit truecolour, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), _PNG_LEVEL)) + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# Text
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _fill(rng: np.random.Generator, template: str, cls: dict, names: list[str]) -> str:
    """Fill a wiki template; synonyms are drawn per sentence, other attributes are true 'others'."""
    oc = _pick(rng, [c for c in COLOURS if c != cls["colour"]])
    os_ = _pick(rng, [s for s in SHAPES if s != cls["shape"]])
    op = _pick(rng, [p for p in PATTERNS if p != cls["pattern"]])
    year = int(rng.integers(1780, 2020))
    values = dict(
        n=cls["name"], c=_pick(rng, COLOUR_WORDS[cls["colour"]]), s=_pick(rng, SHAPE_WORDS[cls["shape"]]),
        p=_pick(rng, PATTERN_WORDS[cls["pattern"]]), pp=_pick(rng, PATTERN_PHRASES[cls["pattern"]]),
        oc=_pick(rng, COLOUR_WORDS[oc]), os=_pick(rng, SHAPE_WORDS[os_]), op=_pick(rng, PATTERN_WORDS[op]),
        other=_pick(rng, [m for m in names if m != cls["name"]]), year=year, year2=year + int(rng.integers(1, 30)),
        decade=year // 10 * 10, num=int(rng.integers(3, 300)), num2=int(rng.integers(12, 99)),
        person=f"{_pick(rng, _PEOPLE_FIRST)} {_pick(rng, _PEOPLE_LAST)}", last=_pick(rng, _PEOPLE_LAST),
        initial=_pick(rng, _PEOPLE_FIRST)[0], place=_pick(rng, _PLACES),
    )
    text = _articles(template.format(**values))
    return text[0].upper() + text[1:]


def _lines(rng: np.random.Generator, sentences: list[str]) -> list[str]:
    """One to three sentences per line, as in scraped wiki text."""
    out, i = [], 0
    while i < len(sentences):
        step = int(rng.integers(1, 4))
        out.append(" ".join(sentences[i:i + step]))
        i += step
    return out


def _wiki(rng: np.random.Generator, cls: dict, names: list[str]) -> str:
    """A Wikipedia-like article: summary, then sections; References/External links are noise that
    the corpus parser drops. Sentence counts vary from 2 to 40 (log-uniform), and every article
    holds one sentence naming all three attributes: for opaque names it is the only link."""
    total = int(round(math.exp(rng.uniform(math.log(2), math.log(40)))))
    n_inf = max(1, round(total * rng.uniform(0.25, 0.5)))
    n_part = min(total - n_inf, round(total * rng.uniform(0.1, 0.3)))
    n_noise = total - n_inf - n_part

    def make(pool: tuple[str, ...], k: int) -> list[str]:
        # Templates without replacement (cycling when k is larger), so an article rarely repeats itself.
        order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-k // len(pool)))] + [np.zeros(0, int)])
        return [_fill(rng, pool[j], cls, names) for j in order[:k]]

    full = make(_FULL, 1)
    inf, part, noise = make(_INFORMATIVE, n_inf - 1), make(_PARTIAL, n_part), make(_NOISE, n_noise)
    if rng.random() < 0.6:  # usually the lead says what it is, as on Wikipedia
        summary = full
    else:
        summary, inf = [], inf + full
        inf = [inf[j] for j in rng.permutation(len(inf))]
    if noise and rng.random() < 0.5:
        summary, noise = summary + noise[:1], noise[1:]
    if not summary:  # every article opens with a summary paragraph
        summary = [(inf or part or noise).pop(0)]  # pops from that list itself

    sections: list[tuple[str, list[str]]]
    if rng.random() < 0.15:  # some articles are one unstructured block
        rest = inf + part + noise
        summary += [rest[j] for j in rng.permutation(len(rest))]
        sections = []
    else:
        split = int(rng.integers(0, len(noise) + 1))
        sections = [("== Appearance ==", inf), ("=== Variants ===", part), ("== History ==", noise[:split]),
                    ("== Distribution ==", noise[split:])]
    sections += [("== References ==", make(_REFERENCES, int(rng.integers(1, 5)))),
                 ("== External links ==", make(_LINKS, int(rng.integers(1, 3))))]
    out = _lines(rng, summary)
    for head, body in sections:
        if body:  # list items one per line, prose one to three sentences per line
            out += ["", head, *(body if body[0].startswith("*") else _lines(rng, body))]
    return "\n".join(out) + "\n"


def _captions(rng: np.random.Generator, combos: list[tuple[str, str, str]]) -> list[str]:
    """One caption per (shape, colour, pattern). Random numbers are drawn for all captions at
    once: one generator call per word choice made 30,000 captions take 5 s."""
    kinds = rng.choice(len(_CAPTION_KINDS), len(combos), p=_CAPTION_P)
    u = rng.random((len(combos), 5))

    def pick(options: tuple[str, ...], x: float) -> str:
        return options[int(x * len(options))]

    out = []
    for (shape, colour, pattern), kind, x in zip(combos, kinds, u):
        template = pick(_CAPTIONS[_CAPTION_KINDS[kind]], x[0])
        text = template.format(c=pick(COLOUR_WORDS[colour], x[1]), s=pick(SHAPE_WORDS[shape], x[2]),
                               p=pick(PATTERN_WORDS[pattern], x[3]), pp=pick(PATTERN_PHRASES[pattern], x[4]))
        out.append(_articles(text))
    return out


# ---------------------------------------------------------------------------------------------
def generate_world(root: Path, spec: WorldSpec, progress: bool = True) -> Path:
    """Generate into root/spec.dirname() if not already complete; return that folder.

    The world is written to a hidden temporary sibling and renamed into place after ``DONE`` is
    written inside it, so a crash never leaves a folder that looks finished. A finished folder is
    returned untouched; one without ``DONE`` is replaced.
    """
    root = Path(root)
    final = root / spec.dirname()
    refuse_link(final, "the built-in world's folder")  # in a shared cache: never read or replaced through a link
    if (final / "DONE").is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    except OSError as e:
        raise DataError(f"The built-in world cannot be generated into {root}: {e.strerror or e}. Pass a writable "
                        "--data-root DIR (or leave it out: the world then goes into the cache), or generate it there "
                        "once as a user who may write it.") from None
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the world may live on shared storage
    log.info("generating the built-in world into %s", final)
    try:
        _write_world(tmp, spec, progress)
        if (final / "DONE").is_file():  # another process finished the same world meanwhile
            shutil.rmtree(tmp)
            return final
        if final.exists():  # an unfinished folder, not made by this function
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "DONE").is_file():
                raise
            shutil.rmtree(tmp)  # lost a race with another process: its world is the same
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class _Batch:
    """One vectorised drawing job: images of one combination, written as ``folder/<name>.png``."""

    folder: Path
    names: tuple[str, ...]
    stream: tuple[int, ...]  # the batch's own random stream, so jobs can run in any order
    shape: str
    colour: str
    pattern: str
    distractor_colours: tuple[int, ...]
    distractor_shapes: tuple[int, ...]


def _run_batch(batch: _Batch, size: int) -> int:
    imgs = _draw_batch(_rng(*batch.stream), batch.shape, batch.colour, batch.pattern, len(batch.names), size,
                       batch.distractor_colours, batch.distractor_shapes)
    for name, arr in zip(batch.names, imgs):
        _write_bytes(batch.folder / f"{name}.png", _png(arr))
    return len(batch.names)


def _write_bytes(path: Path, data: bytes) -> None:
    """os.open/os.write: Path.write_bytes costs ~5x more CPU per small file (buffering, isatty)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _write_world(out: Path, spec: WorldSpec, progress: bool) -> None:
    classes, rare_values = _design_classes(spec)
    counts = train_counts(spec)
    C = spec.num_classes
    # Rare values stay out of the labelled world entirely, distractors included: otherwise the
    # head classes would show them to the image model after all.
    rare_c = {COLOURS.index(c) for c in rare_values["colour"]}
    rare_s = {SHAPES.index(s) for s in rare_values["shape"]}
    lab_colours = tuple(c for c in range(len(COLOURS)) if c not in rare_c)
    lab_shapes = tuple(s for s in _DISTRACTOR_SHAPES if s not in rare_s)

    batches: list[_Batch] = []
    splits = (("train", counts, _S_TRAIN), ("val", [spec.val_per_class] * C, _S_VAL),
              ("test", [spec.test_per_class] * C, _S_TEST))
    for split, per_class, stream in splits:
        lines = []
        for cls, n in zip(classes, per_class):
            rel = f"{split}/c{cls['label']:03d}"
            names = tuple(f"{j:05d}" for j in range(int(n)))
            (out / rel).mkdir(parents=True)
            batches.append(_Batch(out / rel, names, (spec.seed, stream, cls["label"]), cls["shape"], cls["colour"],
                                  cls["pattern"], lab_colours, lab_shapes))
            lines += [f"{rel}/{name}.png {cls['label']}\n" for name in names]
        _write_text(out / f"SyntheticLT_{split}.txt", "".join(lines))
    batches += _caption_corpus(out, spec)

    # One thread: on 2-core machines a thread pool measured no faster (file creation, not
    # drawing, takes half the time), and every batch has its own stream, so order is free anyway.
    bar = tqdm(total=sum(len(b.names) for b in batches), desc="synthetic_lt", unit="img", disable=not progress)
    with bar:
        for batch in batches:
            bar.update(_run_batch(batch, spec.image_size))

    _write_text(out / "labels.txt", "".join(f"{c['name'].replace(' ', '_')} {c['label']}\n" for c in classes))
    (out / "wiki").mkdir()
    names = [c["name"] for c in classes]
    for cls in classes:
        text = _wiki(_rng(spec.seed, _S_WIKI, cls["label"]), cls, names)
        _write_text(out / "wiki" / f"desc_{cls['label']}.txt", text)
    sizes = {split: int(sum(n)) for split, n, _ in splits} | {"clip_pretrain": spec.num_captions}
    meta = dict(world_version=WORLD_VERSION, spec=asdict(spec), tail_max=TAIL_MAX, rare_values=rare_values,
                palette={c: list(PALETTE[c]) for c in COLOURS}, split_sizes=sizes, classes=classes)
    _write_text(out / "world.json", json.dumps(meta, indent=1) + "\n")
    _write_text(out / "DONE", f"synthetic_lt v{WORLD_VERSION}\n")  # last: marks the folder complete


def _caption_corpus(out: Path, spec: WorldSpec) -> list[_Batch]:
    """Write clip_pretrain.tsv and return the drawing jobs of its images.

    The corpus covers all 320 combinations evenly, rare values included: it is how a mini-CLIP
    learns the concepts that the long-tailed training set barely shows. Opaque class names never
    appear; captions name one to three attributes, with synonyms.
    """
    combos = list(itertools.product(SHAPES, COLOURS, PATTERNS))
    rng = _rng(spec.seed, _S_CAPTION_IMG)
    reps = -(-spec.num_captions // len(combos))
    order = np.concatenate([rng.permutation(len(combos)) for _ in range(reps)] + [np.zeros(0, np.int64)])
    order = order[: spec.num_captions]
    width = max(5, len(str(spec.num_captions - 1)))
    folder = out / "clip_pretrain"
    folder.mkdir()
    batches = []
    for k in np.unique(order):
        names = tuple(f"{i:0{width}d}" for i in np.flatnonzero(order == k))
        batches.append(_Batch(folder, names, (spec.seed, _S_CAPTION_IMG, int(k)), *combos[k],
                              tuple(range(len(COLOURS))), _DISTRACTOR_SHAPES))
    captions = _captions(_rng(spec.seed, _S_CAPTION_TXT), [combos[k] for k in order])
    lines = [f"clip_pretrain/{i:0{width}d}.png\t{text}\n" for i, text in enumerate(captions)]
    _write_text(out / "clip_pretrain.tsv", "".join(lines))
    return batches


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
