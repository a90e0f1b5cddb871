"""The per-class text corpus: prompt templates, wiki files, sentence splitting, corpus statistics.

This module owns docs/algorithms.md#wiki-corpus and docs/algorithms.md#sentence-list, reproducing
the official VL-LTR preprocessing (its ``mcloader/preprocess.py``) exactly, quirks included:

* the prompt block is the 80 OpenAI ImageNet templates filled with ``name + " "`` (so
  "a photo of a goldfish ."), joined by newlines;
* the wiki text is appended to the prompt block with NO separator, then the whole is split into
  sentences, so the result is the 80 prompt sentences followed by the wiki sentences (a wiki text
  starting with a lowercase letter or a digit merges into the last prompt sentence, as in the
  official code);
* ``wiki/desc_{k}.txt`` is indexed 0-based into the sorted class list.

Decisions beyond the official code: an empty (or whitespace-only) wiki file and a file that is
neither UTF-8 nor GBK are :class:`DataError` s naming the file (the official code would silently use
the prompts or crash); a class
whose wiki file is absent falls back to its prompts with one logged warning.
"""
from __future__ import annotations

import functools
import logging
import random
import re
import statistics
from pathlib import Path
from typing import Callable, Sequence

from open_clip.tokenizer import SimpleTokenizer
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from ..errors import DataError

log = logging.getLogger(__name__)


#: The 80 templates: open_clip's ``OPENAI_IMAGENET_TEMPLATES``, same order (= the official code's
#: list). Each is a callable ``t(text) -> str``; :func:`fill_prompts` passes ``name + " "`` as the
#: official code does.
PROMPT_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(OPENAI_IMAGENET_TEMPLATES)


def prompt_templates() -> tuple[Callable[[str], str], ...]:
    """The 80 prompt templates (:data:`PROMPT_TEMPLATES`)."""
    return PROMPT_TEMPLATES

SOURCES = ("wiki_prompt", "prompt_only")

#: Sections left out of the corpus text (docs/algorithms.md#wiki-corpus step 4; exact,
#: case-sensitive names as in the official code).
DROPPED_SECTIONS = ("External links", "References", "Further reading", "Bibliography")

# docs/algorithms.md#sentence-list step 3, the official code's regex with its dead branch removed.
# A split point is a zero-width position
#   (?<=[.?])          right after "." or "?",
#   (?=[\sA-Z])        followed by whitespace or an ASCII uppercase letter,
#   (?<![A-Z]\.)       unless the two characters before it are uppercase + "." (initials, "U.S."),
#   (?<!\w\.\w.)       unless the four before it are word-char "." word-char any ("e.g.", "i.e.").
# The official code also has (?<![A-Z][a-z]), which can never match here (the character before is
# "." or "?").
# "\w" is Python's Unicode word class and "." does not match a newline, both as in the official code.
_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z]\.)(?<=[.?])(?=[\sA-Z])")


def fill_prompts(name: str) -> list[str]:
    """The 80 prompt sentences for one class, each template filled with ``name + " "``
    (docs/algorithms.md#sentence-list step 1)."""
    return [t(name + " ") for t in prompt_templates()]


def parse_wiki(text: str) -> dict[str, str]:
    """Split a wiki file's text into sections (docs/algorithms.md#wiki-corpus steps 1-3), as the
    official code's ``_parse_wiki``.

    Lines are stripped and blank ones dropped; a line starting with ``==`` opens a section named by
    the line with ``=`` and spaces stripped (any heading level); text before the first heading is
    ``summary``. A repeated section name keeps its first position and its last text (a dict).
    """
    # The official code reads with readlines() in text mode: universal newlines, no split on \f, \v,
    # \u2028 ...
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    sections: dict[str, str] = {}
    key, val = "summary", ""
    for line in (ln for ln in lines if ln):
        if line[:2] == "==":
            sections[key] = val.strip()
            key, val = line.strip("= "), ""
        else:
            val += line + "\n"
    sections[key] = val.strip()
    return sections


def wiki_corpus_text(sections: dict[str, str]) -> str:
    """Summary + "\\n" + the other kept sections joined by "\\n"
    (docs/algorithms.md#wiki-corpus step 4, the official code's ``_get_text``)."""
    skip = ("summary", *DROPPED_SECTIONS)
    return sections.get("summary", "") + "\n" + "\n".join(v for k, v in sections.items() if k not in skip)


def read_wiki_file(path: Path) -> str:
    """A wiki file's raw text: UTF-8, else GBK (as in the official code). Empty or undecodable is a
    :class:`DataError`.

    An empty file raises rather than warns: Table 7's minimum is one wiki sentence per class, so
    an empty file in a release is a broken download or extraction, and silently training on the
    prompts alone would change the results.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Wiki file not found: {path}.") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        try:
            text = data.decode("gbk")
        except UnicodeDecodeError:
            raise DataError(
                f"Wiki file {path} is neither UTF-8 nor GBK text (invalid UTF-8 at byte {e.start}: "
                f"{e.reason}). Re-extract it from the VL-LTR text-corpus release, or convert it to UTF-8."
            ) from None
    if not text.strip():
        raise DataError(
            f"Wiki file {path} is empty. Re-extract it from the VL-LTR text-corpus release; to train "
            "this class on prompts only, delete the file (a class without a wiki file falls back to "
            "its prompts with a warning)."
        )
    return text


def wiki_text(path: Path) -> str:
    """The wiki part of a class's corpus text: the file read, parsed and joined
    (docs/algorithms.md#wiki-corpus steps 1-4)."""
    return wiki_corpus_text(parse_wiki(read_wiki_file(path)))


def split_sentences(text: str) -> list[str]:
    """Split text into sentences exactly as docs/algorithms.md#sentence-list steps 3-4 (the official
    code's ``split_sent``).

    Splits after "." or "?" followed by whitespace or A-Z, except after uppercase + "." ("U.S.",
    "J. R. R.") and after letter-"."-letter-any ("e.g."); "Dr." splits. Pieces are stripped and
    empty ones dropped.
    """
    return [s.strip() for s in _SPLIT.split(text) if s.strip()]


def class_sentences(name: str, wiki_path: Path | None, source: str = "wiki_prompt") -> list[str]:
    """One class's sentence list: the 80 prompts, then (``wiki_prompt``) the wiki sentences.

    The wiki text is appended to the prompt block with no separator before splitting
    (docs/algorithms.md#sentence-list step 2).
    ``wiki_path=None`` or ``source="prompt_only"`` gives the prompts alone.
    """
    _check_source(source)
    text = "\n".join(fill_prompts(name))
    if source == "wiki_prompt" and wiki_path is not None:
        text += wiki_text(wiki_path)
    return split_sentences(text)


def wiki_path(wiki_dir: Path, k: int) -> Path:
    """``wiki/desc_{k}.txt``, k a 0-based index into the sorted class list (⚠ the official VL-LTR README
    says desc_1)."""
    return Path(wiki_dir) / f"desc_{k}.txt"


def build_corpus(classnames: list[str], wiki_dir: Path | None, source: str = "wiki_prompt") -> list[list[str]]:
    """Per-class sentence lists in class order (prompts first, then wiki), for ``source`` in
    ``wiki_prompt`` / ``prompt_only``.

    A class without a wiki file (or every class, when ``wiki_dir`` is None or absent) falls back
    to its prompts, with one warning naming the classes. A wiki file that is empty or undecodable
    raises :class:`DataError`.
    """
    _check_source(source)
    use_wiki = source == "wiki_prompt" and wiki_dir is not None and Path(wiki_dir).is_dir()
    if source == "wiki_prompt" and not use_wiki:
        log.warning(
            "No wiki folder%s: all %d classes use the 80 prompt sentences only. Extract the VL-LTR "
            "text-corpus release into the data root as wiki/ to use the wiki corpus.",
            f" at {wiki_dir}" if wiki_dir is not None else "",
            len(classnames),
        )
    corpus: list[list[str]] = []
    absent: list[str] = []
    for k, name in enumerate(classnames):
        path = wiki_path(wiki_dir, k) if use_wiki else None  # type: ignore[arg-type]
        if path is not None and not path.is_file():
            absent.append(f"{k} ({name})")
            path = None
        corpus.append(class_sentences(name, path, "wiki_prompt" if use_wiki else "prompt_only"))
    if absent:
        shown = ", ".join(absent[:20]) + (f", and {len(absent) - 20} more" if len(absent) > 20 else "")
        log.warning(
            "%d of %d classes have no wiki file in %s and use their prompts only: %s.",
            len(absent), len(classnames), wiki_dir, shown,
        )
    return corpus


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise DataError(f"Unknown text source {source!r}; choose one of: {', '.join(SOURCES)}.")


@functools.lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def corpus_stats(
    corpus: Sequence[Sequence[str]],
    n_prompts: int = 80,
    *,
    token_sample: int | None = None,
    seed: int = 0,
) -> dict[str, float | int]:
    """Statistics comparable to the paper's Table 7 (docs/algorithms.md#corpus-statistics).

    Wiki sentences per class are ``len(sentences) - n_prompts`` (floored at 0): Table 7's minimum
    is below 80, so its counts exclude the prompts. ``avg_tokens`` is the mean number of CLIP BPE
    tokens (open_clip's ``SimpleTokenizer.encode``, no start/end tokens) over all wiki sentences,
    or over a seeded random sample of ``token_sample`` of them.
    """
    counts = [max(len(s) - n_prompts, 0) for s in corpus]
    wiki = [sent for s in corpus for sent in s[n_prompts:]]
    if token_sample is not None and token_sample < len(wiki):
        wiki = random.Random(seed).sample(wiki, token_sample)
    enc = _tokenizer().encode
    n_tokens = sum(len(enc(s)) for s in wiki)
    return {
        "classes": len(counts),
        "classes_without_wiki": sum(c == 0 for c in counts),
        "min": min(counts, default=0),
        "max": max(counts, default=0),
        "mean": statistics.fmean(counts) if counts else 0.0,
        "median": statistics.median(counts) if counts else 0.0,
        "avg_tokens": n_tokens / len(wiki) if wiki else 0.0,
        "sentences_tokenized": len(wiki),
    }
