"""CLIP backbones: open_clip models by (name, pretrained tag or local file), offline-safe.

Registered here (``python run_bench.py list``): ``RN50`` and ``ViT-B-16`` (OpenAI CLIP through
open_clip). Plugins may register more (the built-in world registers its tiny ``mini-clip`` and the
``builtin`` weights source that pretrains it, ``datasets/_miniclip.py``). Every model is built by
``open_clip.create_model(name, pretrained=<file>)``: the ``clip_weights`` stage turns a tag
(``openai``), an OpenAI TorchScript ``.pt``, an open_clip state dict or a registered weights source
(:data:`ltrbench.registry.WEIGHTS`) into one state-dict file first, so every CLIP loads by one path.

Offline, a tag whose file is not cached is a clear error within seconds (a 3-second probe of
the hub), naming the file, where it is published and where to put it: never a hang.

No code runs from a weights file. A state dict (``.pt``, ``.pth``, ``.bin``) is read with
``torch.load(weights_only=True)`` (through open_clip's loader), a ``.safetensors`` file with
safetensors; a pickle holding anything but tensors and plain values is refused. A TorchScript
archive (the format of OpenAI's ``.pt`` releases) is a program: loading one runs the code stored
in it. It is converted only when it is one of OpenAI's releases, recognised by the SHA-256 that
open_clip's table of pretrained weights publishes in their URLs (so ``RN50.pt`` as downloaded from
OpenAI just works), or when the user opts in for a file they trust with
``--set backbone.trust_torchscript=true``. :func:`check_weights_file` runs these checks before any
work; :func:`convert_to_state_dict` runs them again where the file is read.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import zipfile
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from huggingface_hub import try_to_load_from_cache
from safetensors.torch import load_file as load_safetensors
from torch import nn

from .errors import ConfigError, LtrBenchError
from .fingerprints import file_sha256
from .registry import BACKBONES, WEIGHTS
from .specs import CLIP_MEAN, CLIP_STD, CORE_BACKBONES, BackboneSpec  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

for _spec in CORE_BACKBONES:
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


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def weights_format(path: Path) -> str:
    """``safetensors``, ``torchscript`` or ``state_dict`` (a torch pickle, zip or legacy)."""
    if Path(path).suffix == ".safetensors":
        return "safetensors"
    return "torchscript" if _is_torchscript(Path(path)) else "state_dict"


@lru_cache(maxsize=1)
def _openai_releases() -> dict[str, str]:
    """SHA-256 → "model/tag" of OpenAI's TorchScript releases (open_clip's table puts each file's
    SHA-256 in its URL, and checks it when it downloads one)."""
    out: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        url = open_clip.get_pretrained_cfg(model, tag).get("url", "")
        parts = url.split("/")
        if "openaipublic" in url and len(parts) > 2 and len(parts[-2]) == 64:
            out.setdefault(parts[-2], f"{model}/{tag}")
    return out


def official_release(path: Path) -> str | None:
    """The OpenAI release ``path`` is, by its SHA-256, or None."""
    return _openai_releases().get(file_sha256(path))


def _refuse_torchscript(path: Path) -> LtrBenchError:
    return LtrBenchError(
        f"CLIP weights file {path} is a TorchScript archive that is not one of OpenAI's releases (its SHA-256 "
        "matches none that open_clip publishes). Loading a TorchScript file runs the code stored in it, so "
        "ltrbench does not load it unless told to. If you trust where the file comes from, pass "
        "--set backbone.trust_torchscript=true; otherwise use an open_clip tag (--set backbone.pretrained=openai) "
        "or a state dict (.pt/.bin saved with torch.save(model.state_dict()), or .safetensors)."
    )


def _unreadable(path: Path, e: BaseException) -> LtrBenchError:
    text = str(e).lower()
    if isinstance(e, pickle.UnpicklingError) and ("weights only" in text or "weights_only" in text):
        why = ("it holds Python objects besides tensors, and unpickling those would run code stored in the file, "
               "which ltrbench refuses")
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'unreadable'}"
    return LtrBenchError(
        f"CLIP weights file {path} cannot be read as weights ({why}). Pass an open_clip state dict (a .pt/.bin "
        "of tensors, or .safetensors), OpenAI's TorchScript release, or an open_clip tag such as "
        "--set backbone.pretrained=openai."
    )


def _read_state_dict(path: Path, *, mmap: bool = False) -> dict:
    """A state dict from a .safetensors file or a torch pickle of tensors (``weights_only``)."""
    try:
        if weights_format(path) == "safetensors":
            return load_safetensors(str(path), device="cpu")
        if mmap and zipfile.is_zipfile(path):
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        else:
            sd = open_clip.factory.load_state_dict(str(path), weights_only=True)
    except Exception as e:  # torch.load and safetensors raise many types for a bad file
        raise _unreadable(path, e) from None
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise LtrBenchError(f"CLIP weights file {path} does not hold a state dict (a mapping of names to tensors). "
                            "Pass an open_clip state dict, a .safetensors file or an open_clip tag.")
    return sd


def check_weights_file(path: Path, *, trust_torchscript: bool = False) -> str:
    """Raise a :class:`LtrBenchError` unless ``path`` is a weights file ltrbench reads safely; return
    its format. Cheap: a state dict is memory-mapped, not read (used before any work)."""
    fmt = weights_format(path)
    if fmt == "torchscript":
        if not trust_torchscript and official_release(path) is None:
            raise _refuse_torchscript(path)
        return fmt
    _read_state_dict(path, mmap=True)
    return fmt


def convert_to_state_dict(src: Path, dst: Path, *, trust_torchscript: bool = False) -> None:
    """Write ``src`` (a state dict, a .safetensors file, or an OpenAI TorchScript release / a trusted
    TorchScript file) as a float32 state dict of tensors at ``dst``."""
    src = Path(src)
    if weights_format(src) == "torchscript":
        if not trust_torchscript and official_release(src) is None:
            raise _refuse_torchscript(src)
        sd = torch.jit.load(str(src), map_location="cpu").state_dict()
        for k in ("input_resolution", "context_length", "vocab_size"):
            sd.pop(k, None)
    else:
        sd = _read_state_dict(src)
        if next(iter(sd)).startswith("module."):
            sd = {k[len("module."):]: v for k, v in sd.items()}
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


def is_weights_path(pretrained: str) -> bool:
    """Whether ``backbone.pretrained`` names a file (a weights suffix or a path), not a tag."""
    return Path(pretrained).suffix in WEIGHT_SUFFIXES or os.sep in pretrained


def tag_available(name: str, pretrained: str, cache_dir: str | None = None) -> None:
    """Raise what :func:`resolve_pretrained` would for a tag that is unknown, or not cached while
    this machine is offline; download nothing (checked before any work)."""
    resolve_pretrained(name, pretrained, cache_dir, download=False)


def resolve_pretrained(name: str, pretrained: str, cache_dir: str | None = None, *, download: bool = True) -> Path:
    """The local file behind ``pretrained`` (a file path, or an open_clip tag, downloaded if online).

    ``download=False`` stops before downloading (the file's would-be path is returned)."""
    if pretrained in WEIGHTS:
        source = WEIGHTS.get(pretrained)
        raise LtrBenchError(f"backbone.pretrained={pretrained!r} is generated weights for the backbones "
                            f"{', '.join(source.backbones)} only; {name} needs an open_clip tag or a weights file.")
    path = Path(pretrained).expanduser()
    if is_weights_path(pretrained):
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
    if not download:
        return where
    log.info("downloading %s/%s with open_clip", name, pretrained)
    return Path(open_clip.download_pretrained(cfg, cache_dir=cache_dir))
