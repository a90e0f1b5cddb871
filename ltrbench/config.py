"""Configuration: frozen dataclasses, loaded from YAML, overridden with ``--set key=value``.

The whole configuration of a benchmark is a :class:`BenchConfig`: one frozen dataclass per
section (``data``, ``backbone`` and one per method family, e.g. ``baseline``, ``stage1``,
``vlltr``). Sections are registered by the code that owns them (:func:`register_section`), so a
method plugin brings its own section without touching this module.

Resolution order, later wins: dataclass defaults → ``configs/<dataset>.yaml`` → its
``backbones: {<name>: …}`` block → ``--config FILE`` → ``--set a.b=c``. Unknown keys and values of
the wrong type are :class:`~ltrbench.errors.ConfigError`\\ s naming the key and the allowed fields.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

import yaml

from .errors import ConfigError, clip
from .registry import SECTIONS

def _config_dir() -> Path:
    """``configs/``: inside the package in a wheel install (pyproject maps it to ltrbench/configs),
    beside it in a source checkout or an editable install."""
    pkg = Path(__file__).resolve().parent
    for cand in (pkg / "configs", pkg.parent / "configs"):
        if cand.is_dir():
            return cand
    raise RuntimeError(f"ltrbench: the configs/ folder was not found beside {pkg}; reinstall ltrbench.")


CONFIG_DIR = _config_dir()


def register_section(name: str, cls: type | None = None):
    """Register ``cls`` as the dataclass of config section ``name`` in :data:`SECTIONS` (a decorator)."""

    def deco(c: type) -> type:
        if not is_dataclass(c):
            raise TypeError(f"config section {name!r}: {c!r} is not a dataclass")
        SECTIONS.add(name, c)
        return c

    return deco(cls) if cls is not None else deco


def sections() -> dict[str, type]:
    """Every registered section (the plugins' included: the registry loads them) by name."""
    return {name: SECTIONS.get(name) for name in SECTIONS}


#: What :func:`tiny_overrides` sets in every ``TrainConfig`` field of a section without a ``tiny()``.
TINY_TRAIN = {"epochs": 1, "batch_size": 64}


def tiny_overrides() -> list[str]:
    """``--set`` overrides cutting every registered section's training to a test's size (the
    conformance test's fast settings): a section's own ``tiny()`` (a static method returning
    ``{field path: value}``, e.g. ``{"train.epochs": 2}``) where it has one, else
    :data:`TINY_TRAIN` in each of its ``TrainConfig`` fields. A new section needs no entry anywhere."""
    out = []
    for name, cls in sections().items():
        hook = getattr(cls, "tiny", None)
        if hook is not None:
            values = dict(hook())
        else:
            try:
                default = cls()
            except TypeError:  # a section without defaults for every field: nothing to cut
                continue
            values = {f"{f.name}.{k}": v for f in fields(cls) if isinstance(getattr(default, f.name), TrainConfig)
                      for k, v in TINY_TRAIN.items()}
        out += [f"{name}.{k}={v}" for k, v in values.items()]
    return out


def from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) frozen config dataclass from its ``dataclasses.asdict`` form (a stage's
    config). Keys the class does not have are an error; missing ones keep their defaults."""
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field {', '.join(unknown)}; its fields: {', '.join(names)}.")
    kwargs = {}
    for name, value in values.items():
        f = names[name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs[name] = from_dict(type(default), value) if is_dataclass(default) and isinstance(value, Mapping) else (
            tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value)
    return cls(**kwargs)


# --------------------------------------------------------------------------- core sections


@register_section("data")
@dataclass(frozen=True)
class DataConfig:
    """Where the data lies and how images are fed. ``root`` is not part of any stage key."""

    root: str | None = None
    image_size: int | None = None  # input side after cropping (None: the backbone's, 224 or 32)
    eval_resize: int | None = None  # short side before the evaluation centre crop (None: the backbone's)
    augment: str = "official"  # official (timm RandAugment recipe) | light | none
    # DataLoader workers per loader (0 = in the main process); None: from the machine where the
    # stage runs (its CPUs over its GPUs, less one, at most 16: ltrbench.data.loaders.worker_count).
    num_workers: int | None = None
    eval_batch_size: int = 256
    preload: bool = False  # decode every image into memory once (small data sets only)
    allow_corrupt: bool = False  # skip unreadable images (and count them) instead of failing
    eval_split: str | None = None  # None: the paper's (test; iNat val). "val" for choosing recipes


@register_section("backbone")
@dataclass(frozen=True)
class BackboneConfig:
    """An open_clip model: a name and a pretrained tag (``openai``) or a local checkpoint file.

    ``trust_torchscript``: convert a TorchScript weights file that is not one of OpenAI's releases
    (loading TorchScript runs code stored in the file; see ltrbench.backbones). Not in any key.
    """

    name: str = "RN50"
    pretrained: str = "openai"
    trust_torchscript: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe, used by the one training loop (ltrbench.train).

    ``lr`` is the recipe's learning rate at global batch ``ref_batch_size``; when ``batch_size``
    differs, the loop scales it linearly (``effective_lr``) and records both in the result.

    ``devices`` (N) runs the training data-parallel on N workers (Ray Train, one device each:
    :mod:`ltrbench.parallel`), ``accumulate`` (k) splits each device's batch into k micro-batches
    per optimizer step; ``batch_size`` stays the global batch, so each device takes
    ``batch_size / N`` images and each micro-batch ``batch_size / (N·k)``. Both enter a stage's key
    only where they are not 1 (:data:`KEY_NEUTRAL_DEFAULTS`), so every key of a single-process run
    stays what it was. They do enter it otherwise, deliberately: the N-device run draws the same
    images, augmentations and sentences as the single-process one and matches it to float
    rounding where every layer is per-sample (the built-in world's ViT), but BatchNorm layers in
    train mode normalise over each device's (or micro-batch's) images, and gradients are summed in
    another order, so its artifact is not the single-process artifact, bit for bit or (RN50) at all.
    The stage's seed does not depend on them (common random numbers across device counts).
    """

    #: Fields left out of a stage key while they hold these values (the defaults of fields added
    #: after keys were first recorded): :func:`ltrbench.stages.config_json`.
    KEY_NEUTRAL_DEFAULTS: ClassVar[Mapping[str, Any]] = {"devices": 1, "accumulate": 1}

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 256
    ref_batch_size: int | None = None
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.05
    momentum: float = 0.9
    warmup_epochs: int = 0
    min_lr: float = 0.0
    # The official code steps timm's cosine once per epoch *after* it; the decoupling code steps
    # it at the start. The lr of 0-based epoch e is g(e + schedule_shift) (epoch 0 of the
    # official code keeps the initial value): -1 = VL-LTR/DeiT, +1 = decoupling
    # (docs/algorithms.md#cosine-schedule).
    schedule_shift: int = -1
    sampler: str = "sqrt"  # instance | sqrt | class_aware
    samples_per_class: int = 4  # class_aware only
    train_mode: bool = True  # False: BatchNorm keeps frozen statistics (IN-LT/Places CVLP)
    freeze_encoder: bool = False
    select_best: bool = False  # keep the epoch with the best val accuracy (cRT), else the last
    # Mixed precision on CUDA (ignored on a CPU): bf16 | fp16 | off. bf16 autocast needs no loss
    # scaling; fp16 (the official codes' choice) runs with torch.amp.GradScaler. ``true`` and
    # ``false`` are the first spellings of bf16 and off, and the stored form (so the stage keys
    # of every earlier run stay as they were): "bf16" is stored as true, "off" as false.
    amp: bool | Literal["bf16", "fp16", "off"] = True
    devices: int = 1  # data-parallel workers, one device each (Ray executor only)
    accumulate: int = 1  # micro-batches per optimizer step on each device

    def __post_init__(self) -> None:
        if self.amp not in (True, False, "bf16", "fp16", "off"):  # from_dict bypasses _coerce
            raise ConfigError(f"train.amp must be bf16, fp16 or off (true = bf16, false = off), got {clip(repr(self.amp))}.")
        canonical = {"bf16": True, "off": False}.get(self.amp, self.amp) if isinstance(self.amp, str) else self.amp
        object.__setattr__(self, "amp", canonical)

    @property
    def amp_mode(self) -> str:
        """The mixed-precision mode by its name: ``bf16``, ``fp16`` or ``off``."""
        return "fp16" if self.amp == "fp16" else ("bf16" if self.amp is True else "off")

    @property
    def per_device_batch(self) -> int:
        """The images each device takes per step (``batch_size / devices``; validated to divide)."""
        return self.batch_size // max(1, self.devices)

    @property
    def micro_batch(self) -> int:
        """The images of one forward and backward pass on one device (``per_device_batch / accumulate``)."""
        return self.per_device_batch // max(1, self.accumulate)

    @property
    def effective_lr(self) -> float:
        ref = self.ref_batch_size or self.batch_size
        return self.lr * self.batch_size / ref


@dataclass(frozen=True)
class BenchConfig:
    """The fully resolved configuration: ``sections`` maps section name → frozen dataclass."""

    sections: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        secs = object.__getattribute__(self, "sections")
        if name in secs:
            return secs[name]
        raise AttributeError(name)

    def section(self, name: str) -> Any:
        if name not in self.sections:
            raise ConfigError(f"No config section {name!r}; known sections: {', '.join(sorted(self.sections))}.")
        return self.sections[name]

    def to_dict(self) -> dict[str, Any]:
        return {k: dataclasses.asdict(v) for k, v in sorted(self.sections.items())}


# --------------------------------------------------------------------------- loading


def load_config(
    dataset: str,
    backbone: str | None = None,
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    config_dir: Path = CONFIG_DIR,
) -> BenchConfig:
    """Resolve the configuration for ``dataset`` (see the module docstring for the order)."""
    secs: dict[str, Any] = {name: cls() for name, cls in sections().items()}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    ds_file = config_dir / f"{dataset}.yaml"
    if ds_file.is_file():
        doc = _read_yaml(ds_file)
        by_backbone = doc.pop("backbones", {}) or {}
        layers.append((str(ds_file), doc))
        name = backbone or (doc.get("backbone") or {}).get("name") or secs["backbone"].name
        if name in by_backbone:
            layers.append((f"{ds_file} (backbones.{name})", by_backbone[name]))
    for f in files:
        layers.append((str(f), _read_yaml(Path(f))))
    for where, doc in layers:
        for sec_name, values in doc.items():
            secs[sec_name] = _apply_mapping(secs, sec_name, values, where)
    if backbone:
        secs["backbone"] = replace(secs["backbone"], name=backbone)
    for item in overrides:
        path, value = _split_override(item)
        secs = _apply_override(secs, path, value, f"--set {clip(item)}")
    return BenchConfig(sections=secs)


#: The most nodes a YAML document may expand to, aliases followed (a config file has a few hundred;
#: 338 bytes of nested aliases expand to billions, the "billion laughs").
MAX_YAML_NODES = 100_000


def _expanded_size(node: yaml.Node, where: str) -> int:
    """The number of nodes ``node`` stands for with every alias expanded, without expanding them;
    :class:`ConfigError` for a structure that contains itself or grows beyond :data:`MAX_YAML_NODES`."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in active:
            raise ConfigError(f"{where}: an alias refers to the node that contains it (a recursive structure); "
                              "a config file is a plain tree of values.")
        active.add(id(n))
        total = 1
        if isinstance(n, yaml.SequenceNode):
            total += sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        active.discard(id(n))
        sizes[id(n)] = total
        if total > MAX_YAML_NODES:
            raise ConfigError(f"{where}: the document expands to more than {MAX_YAML_NODES:,} values once its aliases "
                              "(*name) are followed; a config file needs a few hundred. Write the values out, "
                              "without nested aliases.")
        return total

    return size(node)


def safe_yaml(text: str, where: str) -> Any:
    """YAML ``text`` as plain data: no tags that build objects (``yaml.SafeLoader``), and no alias
    structure that expands beyond :data:`MAX_YAML_NODES` (checked before anything is built)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        doc = safe_yaml(path.read_text(encoding="utf-8"), f"Config file {path}") or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {e.start}: {e.reason}); a config file is "
                          "YAML text.") from None
    except OSError as e:
        raise ConfigError(f"Config file {path} cannot be read: {e.strerror or e}.") from None
    except RecursionError:
        raise ConfigError(f"Config file {path} is nested too deep to be a config file.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {clip(e, 300)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of sections, got {type(doc).__name__}.")
    return doc


def _split_override(item: str) -> tuple[list[str], str]:
    if "=" not in item:
        raise ConfigError(
            f"Bad --set {clip(item)!r}: expected key=value, e.g. --set baseline.train.lr=0.001 "
            f"(sections: {', '.join(sorted(SECTIONS.names()))})."
        )
    key, value = item.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if len(path) < 2 or not all(path):
        raise ConfigError(
            f"Bad --set {clip(item)!r}: the key must be section.field (e.g. data.root), "
            f"sections: {', '.join(sorted(SECTIONS.names()))}."
        )
    return path, value.strip()


def _apply_mapping(secs: dict[str, Any], sec_name: str, values: Any, where: str) -> Any:
    if sec_name not in secs:
        raise ConfigError(
            f"{where}: unknown config section {clip(sec_name)!r}. Known sections: {', '.join(sorted(secs))}."
        )
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: section {sec_name!r} must be a mapping of fields.")
    return _merge(secs[sec_name], values, sec_name, where)


def _merge(obj: Any, values: Mapping[str, Any], path: str, where: str) -> Any:
    hints = typing.get_type_hints(type(obj))
    changes: dict[str, Any] = {}
    names = [f.name for f in fields(obj)]
    for key, value in values.items():
        if key not in names:
            raise ConfigError(_unknown_key(where, f"{path}.{key}", names))
        cur = getattr(obj, key)
        if is_dataclass(cur) and isinstance(value, Mapping):
            changes[key] = _merge(cur, value, f"{path}.{key}", where)
        else:
            changes[key] = _coerce(value, hints[key], f"{path}.{key}", where)
    return replace(obj, **changes)


def _apply_override(secs: dict[str, Any], path: list[str], raw: str, where: str) -> dict[str, Any]:
    sec_name = path[0]
    if sec_name not in secs:
        raise ConfigError(f"{where}: unknown config section {clip(sec_name)!r}. Known sections: {', '.join(sorted(secs))}.")
    value: Any = raw
    for key in reversed(path[1:]):
        value = {key: value}
    out = dict(secs)
    out[sec_name] = _merge_raw(secs[sec_name], value, sec_name, where)
    return out


def _merge_raw(obj: Any, values: Mapping[str, Any], path: str, where: str) -> Any:
    """Like _merge, but leaf values are command-line strings parsed by the field's type."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(_unknown_key(where, f"{path}.{key}", names))
        cur = getattr(obj, key)
        if isinstance(value, Mapping):
            if not is_dataclass(cur):
                raise ConfigError(f"{where}: {path}.{key} is a plain value, it has no sub-fields.")
            changes[key] = _merge_raw(cur, value, f"{path}.{key}", where)
        elif is_dataclass(cur):
            sub = [f.name for f in fields(cur)]
            raise ConfigError(f"{where}: {path}.{key} is a group; set one of its fields: {', '.join(sub)}.")
        else:
            changes[key] = _coerce(_parse_cli_value(value), hints[key], f"{path}.{key}", where)
    return replace(obj, **changes)


def _parse_cli_value(raw: str) -> Any:
    try:
        return safe_yaml(raw, f"--set value {clip(raw)!r}") if raw != "" else ""
    except (yaml.YAMLError, RecursionError):
        return raw


def _unknown_key(where: str, key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown config key {clip(key)!r}.{hint} Allowed fields: {', '.join(names)}."


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, X | None, tuple[X, ...])."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {clip(repr(value))}.")
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list of {_type_name(inner)}, got {clip(repr(value))}.")
        return tuple(_coerce(v, inner, key, where) for v in value)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, str) and value in allowed:
            return value
        raise ConfigError(f"{where}: {key} must be {_type_name(tp)}, got {clip(repr(value))}.")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be true or false, got {clip(repr(value))}.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {key} must be an integer, got {clip(repr(value))}.")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {key} must be a number, got {clip(repr(value))}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {key} must be a string, got {clip(repr(value))}.")
    raise ConfigError(f"{where}: {key} has an unsupported type {tp!r}.")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if tp is bool:
        return "true or false"
    return getattr(tp, "__name__", str(tp))
