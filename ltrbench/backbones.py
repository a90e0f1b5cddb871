"""CLIP backbones: open_clip models by (name, pretrained tag or local file), offline-safe.

Registered here (``python run_bench.py list``): ``RN50`` and ``ViT-B-16`` (OpenAI CLIP through
open_clip). Plugins may register more (the built-in world registers its tiny ``mini-clip`` and the
``builtin`` weights source that pretrains it, ``datasets/_miniclip.py``). Every model is built by
``open_clip.create_model(name, pretrained=<file>)``: the ``clip_weights`` stage turns a tag
(``openai``), an OpenAI TorchScript ``.pt``, an open_clip state dict or a registered weights source
(:data:`ltrbench.registry.WEIGHTS`) into one state-dict file first, so every CLIP loads by one path.

Offline, a tag whose file is not cached is a clear error within seconds (a 3-second probe of
the hub), naming the file, where it is published and where to put it: never a hang.
"""
from __future__ import annotations

import logging
import os
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .errors import ConfigError, LtrBenchError
from .registry import BACKBONES, WEIGHTS

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class BackboneSpec:
    """What the harness needs to know of a backbone besides its open_clip config."""

    name: str  # open_clip model name
    image_size: int
    eval_resize: int
    embed_dim: int
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    default_pretrained: str = "openai"


for _spec in (BackboneSpec("RN50", 224, 256, 1024), BackboneSpec("ViT-B-16", 224, 256, 512)):
    BACKBONES.add(_spec.name, _spec)


def create_clip(name: str, checkpoint: str | os.PathLike | None, device: str | torch.device = "cpu",
                image_size: int | None = None) -> nn.Module:
    """An fp32 open_clip CLIP model, weights from a state-dict file (or random when None).

    ``image_size`` other than the backbone's own (e.g. 384 for ViT-B/16, Table 3's VL-LTR-384)
    builds the image tower for that size; open_clip then resizes the checkpoint's positional
    embedding (bicubic, as the official code's ``interpolate_pos_embed``) while loading it.
    :func:`check_input_size` says which backbones can.
    """
    spec = BACKBONES.get(name)
    force = image_size if image_size and image_size != spec.image_size else None
    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)  # random init is intended when a state dict is loaded right after
    try:
        return open_clip.create_model(name, pretrained=str(checkpoint) if checkpoint else None, device=device,
                                      force_image_size=force)
    finally:
        root.removeFilter(quiet)


def check_input_size(name: str, image_size: int) -> None:
    """Fail at planning when ``name`` cannot take ``image_size`` px images: a ViT can (its
    positional embedding is resized to the new patch grid, which needs a multiple of the patch
    size); CLIP's ResNets cannot (their attention pool's positional embedding is fixed)."""
    spec = BACKBONES.get(name)
    if image_size == spec.image_size:
        return
    vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(f"data.image_size={image_size}: {name} runs only at {spec.image_size} px (a ResNet's "
                          "attention pool has a fixed positional embedding); use a ViT backbone, e.g. ViT-B-16, "
                          "for another input size.")
    patch = vision.get("patch_size")
    if patch and image_size % patch:
        raise ConfigError(f"data.image_size={image_size}: {name} needs a multiple of its patch size {patch} "
                          f"(e.g. {image_size - image_size % patch or patch}).")


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def tokenizer(name: str):
    return open_clip.get_tokenizer(name)


# --------------------------------------------------------------------------- weights resolution


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def convert_to_state_dict(src: Path, dst: Path) -> None:
    """Write ``src`` (OpenAI TorchScript .pt or any state dict open_clip reads) as a state dict."""
    if _is_torchscript(src):
        sd = torch.jit.load(str(src), map_location="cpu").state_dict()
        for k in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(k, None)
    else:
        sd = open_clip.factory.load_state_dict(str(src), weights_only=False)
    torch.save({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, dst)


def _hub_reachable(timeout: float = 3.0) -> bool:
    for host in ("huggingface.co", "openaipublic.azureedge.net"):
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return True
        except OSError:
            continue
    return False


def _cached_tag_file(cfg: dict, cache_dir: str | None) -> Path | None:
    url = cfg.get("url", "")
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            repo = hub.rstrip("/")
            for fname in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
                hit = try_to_load_from_cache(repo, fname, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
        except Exception:  # pragma: no cover - hub client missing or changed
            pass
    if url:
        local = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        if local.is_file():
            return local
    return None


def resolve_pretrained(name: str, pretrained: str, cache_dir: str | None = None) -> Path:
    """The local file behind ``pretrained`` (a file path, or an open_clip tag, downloaded if online)."""
    if pretrained in WEIGHTS:
        source = WEIGHTS.get(pretrained)
        raise LtrBenchError(f"backbone.pretrained={pretrained!r} is generated weights for the backbones "
                            f"{', '.join(source.backbones)} only; {name} needs an open_clip tag or a weights file.")
    path = Path(pretrained).expanduser()
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or os.sep in pretrained:
        if not path.is_file():
            raise LtrBenchError(
                f"CLIP weights file {path} does not exist. Pass an OpenAI TorchScript .pt "
                f"(e.g. {name}.pt) or an open_clip state dict with --set backbone.pretrained=FILE."
            )
        return path
    cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise LtrBenchError(
            f"{pretrained!r} is neither a file nor an open_clip tag of {name}; its tags: {', '.join(tags) or '(none)'}."
        )
    hit = _cached_tag_file(cfg, cache_dir)
    if hit is not None:
        return hit
    url = cfg.get("url") or f"https://huggingface.co/{cfg.get('hf_hub', '').rstrip('/')}"
    fname = os.path.basename(cfg.get("url", "")) or "open_clip_pytorch_model.bin"
    where = Path(cache_dir or Path.home() / ".cache" / "clip") / fname
    if not _hub_reachable():
        raise LtrBenchError(
            f"CLIP weights {name}/{pretrained} are not cached and this machine is offline. "
            f"Download {fname} from {url} and either put it at {where} or pass "
            f"--set backbone.pretrained=/path/to/{fname}."
        )
    log.info("downloading %s/%s with open_clip", name, pretrained)
    return Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
