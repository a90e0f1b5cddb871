"""What the harness needs to know of a backbone besides its open_clip config, importable without
torch or open_clip (``run_bench.py list`` reads it; :mod:`ltrbench.backbones` registers the core ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's open_clip name, its train crop and eval resize (px), its embedding width, its
    normalisation and the weights tag used when a config names none."""

    name: str  # open_clip model name
    image_size: int
    eval_resize: int
    embed_dim: int
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    default_pretrained: str = "openai"


#: The backbones of the paper, registered by :mod:`ltrbench.backbones`.
CORE_BACKBONES = (BackboneSpec("RN50", 224, 256, 1024), BackboneSpec("ViT-B-16", 224, 256, 512))
