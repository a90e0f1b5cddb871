"""Model assembly and the model manifest that lets any stage rebuild a model from an artifact.

A model-producing stage (``clip_weights``, ``finetune``, ``cvlp``) writes ``model.json``:
``{"type": "clip" | "classifier", "backbone": NAME, "checkpoint": FILE, ...}`` next to its
weights. :func:`load_model` rebuilds the module from that folder alone, so stages hand models to
each other through the cache, never through the driver's memory.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import create_clip
from .errors import CacheError
from .heads import CosineHead


class Classifier(nn.Module):
    """A CLIP image tower + a linear head: the baseline, stage 1 of the decoupled heads, FC.

    ``head="cosine"``: a cosine classifier of scale ``head_scale`` instead (no bias; LDAM-DRW's
    ``NormedLinear`` is scale 1, its loss scales by s)."""

    def __init__(self, visual: nn.Module, embed_dim: int, num_classes: int, head: str = "linear",
                 head_scale: float = 1.0) -> None:
        super().__init__()
        self.visual = visual
        if head not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {head!r}")
        self.head = nn.Linear(embed_dim, num_classes) if head == "linear" else CosineHead(embed_dim, num_classes, head_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.visual(x))


def write_manifest(folder: Path, **manifest: Any) -> None:
    (Path(folder) / "model.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / "model.json").read_text())


def load_model(folder: Path, device: torch.device | str = "cpu", image_size: int | None = None) -> nn.Module:
    """Rebuild the model an artifact folder describes (a CLIP model or a Classifier), its image
    tower built for ``image_size`` px inputs (None: the backbone's own size).

    Weights are read as tensors only (``weights_only=True``, here and in open_clip's loader): a
    checkpoint replaced by a pickle of anything else, even with a matching manifest, is refused
    with an error naming the folder, and nothing in it runs.
    """
    folder = Path(folder)
    man = read_manifest(folder)
    try:
        if man["type"] == "clip":
            return create_clip(man["backbone"], folder / man["checkpoint"], device=device, image_size=image_size)
        if man["type"] == "classifier":
            clip = create_clip(man["backbone"], None, device="cpu", image_size=image_size)
            model = Classifier(clip.visual, man["embed_dim"], man["num_classes"], man.get("head", "linear"),
                               man.get("head_scale", 1.0))
            model.load_state_dict(torch.load(folder / man["checkpoint"], map_location="cpu", weights_only=True))
            return model.to(device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as e:
        raise CacheError(
            f"The model in {folder} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]}). Its "
            "files match their manifest, so they were replaced deliberately or by another program; nothing in "
            f"them was run. Delete {folder} and run again to rebuild it."
        ) from None
    raise ValueError(f"{folder}/model.json: unknown model type {man['type']!r}")
