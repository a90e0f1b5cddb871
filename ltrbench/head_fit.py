"""Heads fitted on cached features: the ``head`` stage kind and the shared decoupling stage 1.

This module owns (ARCHITECTURE.md "Stages", ``head`` row):

* :class:`HeadData`: a run's cached features as tensors (train/val/eval splits, the stage-1
  classifier W and b when the encoder was a classifier, the corpus's sentence features).
* :class:`HeadMethod`: the base class of methods that are a head on a frozen encoder (cRT, LWS,
  NCM, τ-norm, KNN, FC). A subclass brings ``fit_head(data, cfg, env) -> HeadFit`` (pure: tensors
  in, eval-split logits out) and says which inputs it needs; planning and prediction are shared.
* :func:`train_head`: training a head module on feature tensors with THE training loop
  (:func:`ltrbench.train.fit`), the sampler of the recipe and optional best-epoch selection on val.
* the ``stage1`` config section and :func:`stage1_features`: the one instance-balanced stage-1
  model (and its features per split) that cRT, LWS, NCM and τ-norm share (ALGORITHMS.md §5).
* :func:`encoder_stage`: the CVLP-pretrained or raw CLIP encoder of KNN and FC (ALGORITHMS.md §4).
* the ``head`` stage: loads its inputs' arrays, calls the method's ``fit_head``, writes the eval
  split's logits and what the head chose (τ, best epoch …) into its artifact.

Training on cached features drops the frozen encoder's augmentation (the decoupling code passes
augmented images through the frozen backbone every epoch, and its BatchNorm statistics drift under
class-balanced batches, ALGORITHMS.md §5): features are extracted once under the evaluation
transform. ``bench/heads.py`` measures what that saves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .config import TrainConfig, register_section
from .data.samplers import EpochSampler, build_sampler
from .errors import ConfigError
from .plan import Method, RunContext
from .registry import METHODS
from .stage_kinds import Prediction, device, load_array, save_array
from .stages import Stage, StageContext, stage_kind
from .train import FitResult, fit, seed_everything

log = logging.getLogger(__name__)

ROLES = ("train", "val", "eval")
ENCODERS = ("cvlp", "clip")


# --------------------------------------------------------------------------- stage 1 (§5)


@register_section("stage1")
@dataclass(frozen=True)
class Stage1Config:
    """The decoupling methods' shared stage-1 model (ALGORITHMS.md §5 "Stage-1 representation").

    ASSUMPTION (logged with every result's config): for the paper's R-50* rows, P only says
    "initialized with CLIP pre-trained weights". The recipe here is the recommended one: the CLIP
    image encoder + Linear(D→C), fully fine-tuned jointly with instance-balanced sampling, the
    feature being the encoder's raw output (D = 1024 attention-pool for RN50); K's joint recipe
    for the rest: SGD momentum 0.9, lr 0.2 at batch 512, weight decay 5e-4 (iNat 1e-4), cosine
    to 0 stepped at epoch start, 90 epochs.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=90, lr=0.2, batch_size=512, ref_batch_size=512, optimizer="sgd", weight_decay=5e-4,
        momentum=0.9, warmup_epochs=0, min_lr=0.0, schedule_shift=1, sampler="instance"))


def decoupling_recipe(epochs: int, select_best: bool = True) -> TrainConfig:
    """K's stage-2 optimiser, ImageNet-LT row of ALGORITHMS §5 (cRT, LWS): SGD momentum 0.9, lr 0.2
    at batch 512, weight decay 5e-4, cosine to 0 stepped at epoch start, class-aware sampler (4 per
    class). K's loop keeps the epoch with the best val top-1 for every stage-2 run."""
    return TrainConfig(epochs=epochs, lr=0.2, batch_size=512, ref_batch_size=512, optimizer="sgd",
                       weight_decay=5e-4, momentum=0.9, warmup_epochs=0, min_lr=0.0, schedule_shift=1,
                       sampler="class_aware", samples_per_class=4, select_best=select_best)


def stage1_features(run: RunContext) -> dict[str, Stage]:
    """The shared stage-1 ``finetune`` and its ``features`` stages, by role (train/val/eval).

    Built from the ``stage1`` section alone, so crt, lws, ncm and tau_norm get equal keys and the
    model is trained once. Val falls back to the evaluation split where a data set has no val
    split (iNat: K selects on val, which is also its evaluation split), and so does eval under
    ``data.eval_split=val`` (recipe tuning).
    """
    model = run.finetune(run.clip_weights(), run.cfg.stage1.train, label="stage1")
    return split_features(run, model)


def split_features(run: RunContext, model: Stage) -> dict[str, Stage]:
    """``features`` stages of ``model`` by role; eval is the reported split (``run.eval_split``)."""
    val = "val" if "val" in run.ds.splits else run.eval_split
    return {"train": run.features(model, "train"), "val": run.features(model, val),
            "eval": run.features(model, run.eval_split)}


def encoder_stage(run: RunContext, encoder: str) -> Stage:
    """The frozen encoder of KNN and FC: ``cvlp`` (Table 4 rows 5–6) or the raw ``clip`` weights."""
    if encoder == "clip":
        return run.clip_weights()
    if encoder == "cvlp":
        # The cvlp stage may not be wired in yet; the raw CLIP weights stand in until it is.
        return run.cvlp_weights() if hasattr(run, "cvlp_weights") else run.clip_weights()
    raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}.")


# --------------------------------------------------------------------------- head inputs / outputs


@dataclass
class HeadData:
    """Cached features of one run, as float32 tensors on the CPU (a role is None when not loaded)."""

    num_classes: int
    eval_x: Tensor
    eval_y: Tensor
    train_x: Tensor | None = None
    train_y: Tensor | None = None
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    weight: Tensor | None = None  # the stage-1 joint classifier W (C×D), when the encoder had one
    bias: Tensor | None = None
    text_x: Tensor | None = None  # sentence features of the corpus (KNN), and their classes
    text_y: Tensor | None = None

    def need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"this head needs {', '.join(missing)}, which its inputs do not provide")


@dataclass
class HeadEnv:
    """Where and how a head is fitted: scratch folder (checkpoints), device, seed, progress bars."""

    work: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = False


@dataclass
class HeadFit:
    """A fitted head's eval-split scores (N×C, arg-max = prediction) and what it chose."""

    logits: Tensor
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- training on features


class _Batches(Sampler[Tensor]):
    """Index batches of an epoch sampler, so a TensorDataset is indexed once per batch, not per item."""

    def __init__(self, sampler: EpochSampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        idx = torch.from_numpy(self.sampler.indices())
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield idx[start : start + self.batch_size]


def feature_loader(x: Tensor, y: Tensor, cfg: TrainConfig, seed: int) -> DataLoader:
    """Batches of cached features drawn by the recipe's sampler (reseeded every epoch by the loop)."""
    smp = build_sampler(cfg.sampler, y.numpy(), seed, cfg.samples_per_class)
    batches = _Batches(smp, cfg.batch_size, drop_last=len(y) > cfg.batch_size)
    return DataLoader(TensorDataset(x, y), sampler=batches, batch_size=None)


class FeatureHeadTask:
    """Cross-entropy training of a head on feature tensors (the TrainTask of cRT, LWS and FC)."""

    def __init__(self, head: nn.Module, val: tuple[Tensor, Tensor] | None, decay_all: bool) -> None:
        self.module = head
        self.val = val
        self.decay_all = decay_all

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.named_parameters()), "decay_all": self.decay_all}]

    def set_mode(self) -> None:
        self.module.train()

    def loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(self.module(x), y)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Micro top-1 on val, K's model-selection score (ALGORITHMS §5 "Model selection")."""
        if self.val is None:
            return None
        self.module.eval()
        x, y = self.val
        return float((self.module(x).argmax(1) == y).float().mean())


@contextlib.contextmanager
def one_cpu_thread(dev: torch.device) -> Iterator[None]:
    """Train small heads on one intra-op thread on a CPU.

    Measured on a 2-core machine (a 64→100 linear head, batch 128): 0.3 ms per step on one
    thread, about 1.4 ms on two, and 47 ms on two while another process holds a core: the
    threads' synchronisation costs far more than such small matrix products gain.
    """
    if dev.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train_head(head: nn.Module, data: HeadData, cfg: TrainConfig, env: HeadEnv, *, decay_all: bool = False,
               desc: str = "head") -> FitResult:
    """Fit ``head`` on ``data``'s training features with the one loop; val for ``select_best``."""
    data.need("train_x", "train_y", *(("val_x", "val_y") if cfg.select_best else ()))
    dev = env.device
    head.to(dev)
    val = (data.val_x.to(dev), data.val_y.to(dev)) if cfg.select_best else None
    loader = feature_loader(data.train_x, data.train_y, cfg, env.seed)
    task = FeatureHeadTask(head, val, decay_all)
    with one_cpu_thread(dev):
        res = fit(task, loader, cfg, Path(env.work) / "ckpt", device=dev, seed=env.seed, progress=env.progress,
                  desc=desc)
    head.eval()
    return res


def fit_info(res: FitResult) -> dict[str, Any]:
    return {"best_epoch": res.best_epoch, "best_val_acc": res.best_score, "history": res.history,
            "train_seconds": round(res.seconds, 3)}


@torch.no_grad()
def head_logits(head: nn.Module, x: Tensor, dev: torch.device, batch: int = 8192) -> Tensor:
    head.eval()
    return torch.cat([head(x[i : i + batch].to(dev)).float().cpu() for i in range(0, len(x), batch)])


# --------------------------------------------------------------------------- methods


class HeadMethod(Method):
    """A method that is a head fitted on cached features of a frozen encoder.

    Subclasses set ``sections`` (their config section first), ``config_cls`` and ``roles`` (the
    feature splits they read), implement :meth:`fit_head` and, in ``plan``, build their inputs and
    call :meth:`plan_head`.
    """

    config_cls: ClassVar[type]
    roles: ClassVar[tuple[str, ...]] = ROLES

    def fit_head(self, data: HeadData, cfg: Any, env: HeadEnv) -> HeadFit:  # pragma: no cover
        raise NotImplementedError

    def config(self, run: RunContext) -> Any:
        return run.cfg.section(self.sections[0])

    def roles_of(self, cfg: Any) -> tuple[str, ...]:
        """The feature splits this head reads under ``cfg`` (val only where it selects on val)."""
        train = getattr(cfg, "train", None)
        if isinstance(train, TrainConfig) and train.select_best and "val" not in self.roles:
            return tuple(r for r in ROLES if r in (*self.roles, "val"))
        return self.roles

    def plan_head(self, run: RunContext, feats: Mapping[str, Stage], extra: Sequence[Stage] = ()) -> Stage:
        """The run's ``head`` stage (on the ``roles`` of ``feats`` plus ``extra`` inputs) → ``evaluate``."""
        cfg = self.config(run)
        roles = self.roles_of(cfg)
        conf = {"method": run.spec.method, "config": dataclasses.asdict(cfg), "features": list(roles),
                "num_classes": run.ds.num_classes, "seed": run.seed}
        inputs = (*(feats[r] for r in roles), *extra)
        head = Stage("head", conf, inputs, run.env(), label=f"{run.spec.name}/seed{run.seed}")
        return run.evaluate([head])

    def predict(self, ctx: StageContext, ds) -> Prediction:
        folder = ctx.input("head")
        info = json.loads((folder / "head.json").read_text())
        return Prediction(scores=load_array(folder, "logits"), labels=load_array(folder, "labels"), info=info)


class TrainedHeadMethod(HeadMethod):
    """A head module trained with cross-entropy on features (cRT, LWS, FC): the subclass builds
    the module (:meth:`make_head`), :meth:`fit_head` trains it with :func:`train_head`.

    ``decay_all``: weight decay on every parameter, as K's plain SGD (cRT, LWS); otherwise timm's
    rule (no decay on biases and 1-D tensors), as the VL-LTR code (FC).
    """

    decay_all: ClassVar[bool] = False

    def make_head(self, data: HeadData, cfg: Any) -> nn.Module:  # pragma: no cover - interface
        raise NotImplementedError

    def head_info(self, head: nn.Module) -> dict[str, Any]:
        return {}

    def fit_head(self, data: HeadData, cfg: Any, env: HeadEnv) -> HeadFit:
        seed_everything(env.seed)  # a new head's initialisation draws from torch's generator
        head = self.make_head(data, cfg)
        res = train_head(head, data, cfg.train, env, decay_all=self.decay_all, desc=self.name)
        return HeadFit(head_logits(head, data.eval_x, env.device), {**fit_info(res), **self.head_info(head)})


def head_methods() -> dict[str, type[HeadMethod]]:
    """Every registered method that is a head on cached features, by name."""
    out = {}
    for name in METHODS:
        cls = METHODS.get(name)
        if isinstance(cls, type) and issubclass(cls, HeadMethod):
            out[name] = cls
    return out


def config_from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Rebuild a (nested) frozen config dataclass from its ``dataclasses.asdict`` form."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kwargs[f.name] = config_from_dict(type(default), v) if is_dataclass(default) else v
    return cls(**kwargs)


# --------------------------------------------------------------------------- the head stage


def _tensor(folder: Path, name: str) -> Tensor:
    return torch.from_numpy(np.array(load_array(folder, name)))


def load_head_data(ctx: StageContext) -> HeadData:
    """Read the head stage's inputs: ``features`` stages in the order of ``config["features"]``."""
    parts: dict[str, Any] = {"num_classes": int(ctx.config["num_classes"])}
    for i, role in enumerate(ctx.config["features"]):
        folder = ctx.input("features", i)
        parts[f"{role}_x"] = _tensor(folder, "feats").float()
        parts[f"{role}_y"] = _tensor(folder, "labels").long()
        if "weight" not in parts and (folder / "head_weight.npy").is_file():
            parts["weight"] = _tensor(folder, "head_weight").float()
            parts["bias"] = _tensor(folder, "head_bias").float()
    if any(s.kind == "text_features" for s in ctx.stage.inputs):
        folder = ctx.input("text_features")
        parts["text_x"] = _tensor(folder, "text_feats").float()
        parts["text_y"] = _tensor(folder, "class_ids").long()
    return HeadData(**parts)


@stage_kind("head", version="1", gpus=0.25)
def head(ctx: StageContext) -> dict[str, Any]:
    method: HeadMethod = METHODS.get(ctx.config["method"])()
    cfg = config_from_dict(method.config_cls, ctx.config["config"])
    data = load_head_data(ctx)
    env = HeadEnv(ctx.out / "work", device(), int(ctx.config["seed"]), ctx.progress)
    res = method.fit_head(data, cfg, env)
    if tuple(res.logits.shape) != (len(data.eval_y), data.num_classes):
        raise RuntimeError(f"head {ctx.config['method']}: logits of shape {tuple(res.logits.shape)}, expected "
                           f"{(len(data.eval_y), data.num_classes)}")
    save_array(ctx.out, "logits", res.logits.float().numpy())
    save_array(ctx.out, "labels", data.eval_y.numpy())
    (ctx.out / "head.json").write_text(json.dumps(res.info, indent=1, default=float))
    shutil.rmtree(ctx.out / "work", ignore_errors=True)  # resume checkpoints: only needed until done
    chosen = {k: v for k, v in res.info.items() if k not in ("history", "sweep", "scales")}
    log.info("head %s: %s", ctx.stage.describe(), chosen)
    return {"head": chosen}
