"""The one head path: heads fitted on cached features, and the ``head`` stage kind.

This module owns (docs/design.md#stages, the ``head`` row):

* :class:`HeadData`: a run's cached features as tensors (train/val/eval splits by role, the
  stage-1 classifier W and b when the encoder was a classifier, the corpus's sentence features,
  and whatever else a method loads for its head in :meth:`HeadMethod.load_extra`).
* :func:`load_head_data`: reading those from a stage's ``features``/``text_features`` inputs, by
  the roles the planner gave them (``Stage.roles``).
* :func:`train_head`: training a head module on feature tensors with THE training loop
  (:func:`ltrbench.stages.train_in`, as :meth:`ltrbench.stages.StageContext.train` does: resume
  checkpoints and TensorBoard events in the stage's folder), the sampler of the
  recipe and optional best-epoch selection on val; cross-entropy unless the method brings a task.
* :func:`head_logits`: a fitted head's scores over a feature tensor or a stream of input batches
  (one output or several, e.g. LGR's two branches).
* :class:`HeadMethod`: the base class of methods that are a head on a frozen encoder (cRT, LWS,
  NCM, τ-norm, KNN, FC). A subclass brings ``fit_head(data, cfg, env) -> HeadFit`` (pure: tensors
  in, eval-split scores out) and says which inputs it needs; planning and prediction are shared.
* the ``head`` stage: loads its inputs' arrays, calls the method's ``fit_head``, writes the eval
  split's scores and what the head chose (τ, best epoch …) into its artifact.

Training on cached features drops the frozen encoder's augmentation (the decoupling code passes
augmented images through the frozen backbone every epoch, and its BatchNorm statistics drift under
class-balanced batches, docs/algorithms.md#crt): features are extracted once under the evaluation
transform. ``bench/heads.py`` measures what that saves.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from .config import TrainConfig
from .data.samplers import EpochSampler, build_sampler
from .metrics import top1
from .planner import Method, RunContext
from .registry import METHODS
from .stage_kinds import Prediction, device, load_array, parameter_counts, save_array
from .stages import Stage, StageContext, stage_kind, train_in
from .train import FitResult, TrainTask, seed_everything

log = logging.getLogger(__name__)

ROLES = ("train", "val", "eval")


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
    extra: dict[str, Any] = field(default_factory=dict)  # what HeadMethod.load_extra adds

    def need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"this head needs {', '.join(missing)}, which its inputs do not provide")


@dataclass
class HeadEnv:
    """Where and how a head is fitted: the folder training writes into (resume checkpoints in
    ``out/work/ckpt``, TensorBoard events in ``out/tb/``: a stage passes its ``ctx.out``, whose
    ``work/`` the engine deletes when done), device, seed, progress bars, and the name of the
    training run in TensorBoard (the stage's label)."""

    out: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: bool = False
    label: str = ""

    @classmethod
    def of(cls, ctx: StageContext, seed: int | None = None) -> "HeadEnv":
        """The environment of a head fitted inside stage ``ctx`` (its seed: the stage's, ``ctx.seed``)."""
        return cls(ctx.out, device(), ctx.seed if seed is None else seed, ctx.progress,
                   ctx.stage.label or ctx.stage.kind)


@dataclass
class HeadFit:
    """A fitted head's eval-split scores (N×C, arg-max = prediction) and what it chose.

    ``arrays`` are more eval-split score arrays the method's ``predict`` reads back by name (e.g.
    LGR's two branches); each is saved as ``<name>.npy`` beside ``logits.npy``.
    """

    logits: Tensor
    info: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, Tensor] = field(default_factory=dict)
    #: the same head's logits on val, where it has val features (``HeadData.val_x``): the evaluate
    #: stage's post-hoc logit adjustment chooses its τ on them
    val_logits: Tensor | None = None


def _tensor(folder: Path, name: str) -> Tensor:
    return torch.from_numpy(np.array(load_array(folder, name)))


def load_head_data(ctx: StageContext, num_classes: int, roles: Sequence[str]) -> HeadData:
    """Read the feature splits named ``roles`` (``features`` inputs with those roles), the stage-1
    classifier saved with them, and the corpus sentence features of a ``text`` input if any."""
    parts: dict[str, Any] = {"num_classes": int(num_classes)}
    for role in roles:
        folder = ctx.input(role)
        parts[f"{role}_x"] = _tensor(folder, "feats").float()
        parts[f"{role}_y"] = _tensor(folder, "labels").long()
        if "weight" not in parts and (folder / "head_weight.npy").is_file():
            parts["weight"] = _tensor(folder, "head_weight").float()
            parts["bias"] = _tensor(folder, "head_bias").float()
    if ctx.has_input("text"):
        folder = ctx.input("text")
        parts["text_x"] = _tensor(folder, "text_feats").float()
        parts["text_y"] = _tensor(folder, "class_ids").long()
    return HeadData(**parts)


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
        """Micro top-1 (%) on val, the decoupling code's model-selection score
        (docs/algorithms.md#model-selection)."""
        if self.val is None:
            return None
        self.module.eval()
        x, y = self.val
        return top1(self.module(x).argmax(1).cpu().numpy(), y.cpu().numpy())


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


def train_head(head: nn.Module, data: HeadData, cfg: TrainConfig, env: HeadEnv, *, task: TrainTask | None = None,
               decay_all: bool = False, desc: str = "head", one_thread: bool = True) -> FitResult:
    """Fit ``head`` on ``data``'s training features with the one loop; val for ``select_best``.

    ``task`` replaces the default cross-entropy :class:`FeatureHeadTask` (its ``module`` must be
    ``head``). ``one_thread``: train on one CPU thread (:func:`one_cpu_thread`).
    """
    data.need("train_x", "train_y", *(("val_x", "val_y") if cfg.select_best else ()))
    dev = env.device
    head.to(dev)
    if task is None:
        val = (data.val_x.to(dev), data.val_y.to(dev)) if cfg.select_best else None
        task = FeatureHeadTask(head, val, decay_all)
    loader = feature_loader(data.train_x, data.train_y, cfg, env.seed)
    with one_cpu_thread(dev) if one_thread else contextlib.nullcontext():
        res = train_in(task, loader, cfg, Path(env.out), device=dev, seed=env.seed, progress=env.progress, desc=desc,
                       run_name=env.label or desc)
    head.eval()
    return res


@torch.no_grad()
def head_logits(head: nn.Module, x: Tensor | Iterable[Tensor], dev: torch.device,
                batch: int = 8192) -> Tensor | tuple[Tensor, ...]:
    """Scores of ``head`` (eval mode, float32, on the CPU) for feature tensor ``x`` in batches of
    ``batch`` rows, or for an iterable of input batches (e.g. images of an evaluation loader). A
    head with several outputs (a tuple) gives a tuple of score tensors."""
    head.eval()
    batches = (x[i : i + batch] for i in range(0, len(x), batch)) if torch.is_tensor(x) else x
    outs: list[tuple[Tensor, ...]] = []
    for b in batches:
        out = head(b.to(dev))
        outs.append(tuple(o.float().cpu() for o in out) if isinstance(out, tuple) else (out.float().cpu(),))
    cat = tuple(torch.cat(parts) for parts in zip(*outs))
    return cat if len(cat) > 1 else cat[0]


# --------------------------------------------------------------------------- methods


class HeadMethod(Method):
    """A method that is a head fitted on cached features of a frozen encoder.

    Subclasses set ``sections`` (their config section first), ``config_cls`` and ``roles`` (the
    feature splits they read), implement :meth:`fit_head` and, in ``plan``, build their inputs and
    call :meth:`plan_head`.
    """

    config_cls: ClassVar[type]
    roles: ClassVar[tuple[str, ...]] = ROLES
    #: what the head's ``logits`` are (:data:`ltrbench.metrics.SCORE_KINDS`): ``scores`` for a head
    #: not trained as log-probabilities (NCM's negative distances, KNN's votes)
    score_kind: ClassVar[str] = "logits"

    def fit_head(self, data: HeadData, cfg: Any, env: HeadEnv) -> HeadFit:  # pragma: no cover
        raise NotImplementedError

    def load_extra(self, ctx: StageContext, data: HeadData) -> None:
        """Add what the head needs beyond features to ``data.extra`` (read from ``ctx``'s inputs)."""

    def config(self, run: RunContext) -> Any:
        return run.cfg.section(self.sections[0])

    def roles_of(self, cfg: Any) -> tuple[str, ...]:
        """The feature splits this head reads under ``cfg`` (val only where it selects on val)."""
        train = getattr(cfg, "train", None)
        if isinstance(train, TrainConfig) and train.select_best and "val" not in self.roles:
            return tuple(r for r in ROLES if r in (*self.roles, "val"))
        return self.roles

    def plan_head(self, run: RunContext, feats: Mapping[str, Stage], extra: Mapping[str, Stage] = {}) -> Stage:
        """The run's ``head`` stage (on the ``roles`` of ``feats`` plus ``extra`` inputs by name) →
        ``evaluate``. A ``text`` extra input (``text_features``) is loaded into ``HeadData.text_*``."""
        cfg = self.config(run)
        roles = self.roles_of(cfg)
        conf = HeadStageConfig(run.spec.method, cfg, tuple(roles), run.ds.num_classes)
        head = run.stage("head", conf, {**{r: feats[r] for r in roles}, **extra}, label=f"{run.spec.name}/seed{run.seed}")
        return run.evaluate({"head": head})

    def predict(self, ctx: StageContext, ds) -> Prediction:
        folder = ctx.input("head")
        info = json.loads((folder / "head.json").read_text())
        val = (folder / "val_logits.npy").is_file()
        return Prediction(scores=load_array(folder, "logits"), labels=load_array(folder, "labels"), info=info,
                          score_kind=self.score_kind, val_scores=load_array(folder, "val_logits") if val else None,
                          val_labels=load_array(folder, "val_labels") if val else None)


class TrainedHeadMethod(HeadMethod):
    """A head module trained with cross-entropy on features (cRT, LWS, FC): the subclass builds
    the module (:meth:`make_head`), :meth:`fit_head` trains it with :func:`train_head`.

    ``decay_all``: weight decay on every parameter, as the decoupling code's plain SGD (cRT, LWS); otherwise timm's
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
        val = head_logits(head, data.val_x, env.device) if data.val_x is not None else None
        return HeadFit(head_logits(head, data.eval_x, env.device),
                       {**res.info, **self.head_info(head), "params": parameter_counts(head, head)}, val_logits=val)


def head_methods() -> dict[str, type[HeadMethod]]:
    """Every registered method that is a head on cached features, by name."""
    out = {}
    for name in METHODS:
        cls = METHODS.get(name)
        if isinstance(cls, type) and issubclass(cls, HeadMethod):
            out[name] = cls
    return out


# --------------------------------------------------------------------------- the head stage


@dataclass(frozen=True)
class HeadStageConfig:
    """A head of method ``method`` with its config section ``section`` (the whole section: a
    field that changes no fit is the section's to leave out), on the feature splits ``features``
    (inputs of those names) and any extra inputs the method names."""

    method: str
    section: Any
    features: tuple[str, ...]
    num_classes: int


@stage_kind("head", version="3", gpus=0.25, memory_gb=2.0, config=HeadStageConfig)
def head(ctx: StageContext) -> dict[str, Any]:
    conf: HeadStageConfig = ctx.config
    method: HeadMethod = METHODS.get(conf.method)()
    cfg = conf.section
    data = load_head_data(ctx, conf.num_classes, conf.features)
    method.load_extra(ctx, data)
    res = method.fit_head(data, cfg, HeadEnv.of(ctx))
    if tuple(res.logits.shape) != (len(data.eval_y), data.num_classes):
        raise RuntimeError(f"head {conf.method}: logits of shape {tuple(res.logits.shape)}, expected "
                           f"{(len(data.eval_y), data.num_classes)}")
    save_head_fit(ctx.out, res, data.eval_y, data.val_y)
    chosen = {k: v for k, v in res.info.items() if k not in ("history", "sweep", "scales", "params")}
    log.info("head %s: %s", ctx.stage.describe(), chosen)
    # version 2: a trained head records its parameters (trained = added: the head on frozen features);
    # version 3: its val logits, where it has val features (the post-hoc rule's τ)
    return {"head": chosen, **({"params": res.info["params"]} if "params" in res.info else {})}


def save_head_fit(folder: Path, res: HeadFit, labels: Tensor, val_labels: Tensor | None = None) -> None:
    """A head's artifact: ``logits.npy`` (and its other score arrays), ``labels.npy``, ``head.json``;
    ``val_logits.npy`` and ``val_labels.npy`` where the head scored val."""
    save_array(folder, "logits", res.logits.float().numpy())
    if res.val_logits is not None and val_labels is not None:
        save_array(folder, "val_logits", res.val_logits.float().numpy())
        save_array(folder, "val_labels", val_labels.numpy())
    for name, arr in res.arrays.items():
        save_array(folder, name, arr.float().numpy())
    save_array(folder, "labels", labels.numpy())
    (folder / "head.json").write_text(json.dumps(res.info, indent=1, default=float))
