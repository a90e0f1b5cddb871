"""The core stage kinds shared by every method (docs/design.md#stages).

* ``clip_weights``: a backbone's starting weights as one state-dict file (a tag or file resolved
  and converted, or built by a registered weights source, :data:`ltrbench.registry.WEIGHTS`).
* ``finetune``: a CLIP image tower + linear head trained with the one training loop, with a
  classification loss chosen by name (:data:`ltrbench.registry.LOSSES`; cross-entropy by default).
* ``features``: the raw image embeddings (and logits, for a classifier) of one split, under the
  evaluation transform, as memory-mappable ``.npy`` files: the feature cache every head reads.
* ``text_features``: the raw text embeddings of every corpus sentence of every class.
* ``evaluate``: a method's scores on the evaluation split → metrics (``result.json``).

Each kind declares its config as a frozen dataclass (:class:`ClipWeightsConfig`,
:class:`FinetuneConfig`, :class:`FeaturesConfig`, :class:`TextFeaturesConfig`,
:class:`EvaluateConfig`) and its named inputs; the engine builds the key from them
(:mod:`ltrbench.stages`). Method plugins add their own kinds with the same decorator; the ``head``
kind (a head fitted on cached features) is :mod:`ltrbench.head_fit`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .backbones import BACKBONES, convert_to_state_dict, resolve_pretrained, tokenizer
from .config import BenchConfig, TrainConfig
from .data.loaders import DatasetRef, ImageSettings, eval_loader, open_dataset, train_loader
from .devices import stage_device
from .errors import LtrBenchError
from .fingerprints import file_sha256
from .losses import posthoc_rule
from .metrics import summarize
from .models import Classifier, load_model, read_manifest, write_manifest
from .registry import LOSSES, METHODS, WEIGHTS
from .stages import Reads, Stage, StageContext, config_value, stage_kind
from .stats import evaluation

log = logging.getLogger(__name__)


def device() -> torch.device:
    """The device of the stage running in this process: what the executor allows it
    (:func:`ltrbench.devices.stage_device`; a stage that reserved no GPU computes on the CPU)."""
    return stage_device()


def dataset_of(ctx: StageContext):
    """The data set of a stage whose config has a ``dataset`` field (the run's ``dataset_key()``)."""
    return open_dataset(DatasetRef.from_key(config_value(ctx.config, "dataset"), ctx.env.get("data_root")))


def image_settings(ctx: StageContext) -> ImageSettings:
    return ImageSettings.from_dict(ctx.env["image"])


def save_array(folder: Path, name: str, arr: np.ndarray) -> None:
    np.save(folder / f"{name}.npy", np.ascontiguousarray(arr))


def load_array(folder: Path, name: str, mmap: bool = True) -> np.ndarray:
    return np.load(Path(folder) / f"{name}.npy", mmap_mode="r" if mmap else None)


# --------------------------------------------------------------------------- clip_weights


@dataclass(frozen=True)
class ClipWeightsConfig:
    """A backbone's starting weights: an open_clip tag, a file (entering the key by the SHA-256 of
    its content, ``file``), or a registered weights source (``generated``: what its ``key(cfg)``
    returns, e.g. the built-in world and mini-CLIP's recipe)."""

    backbone: str
    pretrained: str
    file: str | None = None
    generated: Mapping[str, Any] = field(default_factory=dict)


def clip_weights_stage(cfg: BenchConfig, env: Mapping[str, Any] | None = None) -> Stage:
    """The ``clip_weights`` stage of a configuration. Its key needs no data set, so validation can
    ask whether it is cached before any data set is read. A weights file enters the key by the
    SHA-256 of its whole content (:func:`ltrbench.fingerprints.file_sha256`)."""
    b = cfg.backbone
    conf = ClipWeightsConfig(b.name, b.pretrained)
    if b.pretrained in WEIGHTS:
        conf = dataclasses.replace(conf, generated=dict(WEIGHTS.get(b.pretrained).key(cfg)))
    elif Path(b.pretrained).expanduser().is_file():
        conf = dataclasses.replace(conf, file=file_sha256(Path(b.pretrained).expanduser()))
    return Stage("clip_weights", conf, {}, dict(env or {}), label=f"{b.name}/{Path(b.pretrained).name}")


def _clip_weights_gpus(config: ClipWeightsConfig) -> float:
    """A tag or a file is only converted (no GPU); a generated source that trains asks for its share."""
    src = config.pretrained
    return float(getattr(WEIGHTS.get(src), "gpus", 0.0)) if src in WEIGHTS else 0.0


@stage_kind("clip_weights", version="1", gpus=_clip_weights_gpus, memory_gb=3.0, config=ClipWeightsConfig, inputs=())
def clip_weights(ctx: StageContext) -> dict[str, Any]:
    cfg: ClipWeightsConfig = ctx.config
    out = ctx.out / "weights.pt"
    if cfg.pretrained in WEIGHTS:
        info = WEIGHTS.get(cfg.pretrained).build(ctx, out)
    else:
        src = resolve_pretrained(cfg.backbone, cfg.pretrained)
        if cfg.file is not None and file_sha256(src) != cfg.file:
            raise LtrBenchError(f"CLIP weights file {src} changed after the run was planned (its SHA-256 is no "
                                "longer the one in this stage's key); run again to plan with the new file.")
        # env, not the key: trusting a file changes whether it is read, never what it holds
        convert_to_state_dict(src, out, trust_torchscript=bool(ctx.env.get("trust_torchscript")))
        info = {"source": str(src)}
    write_manifest(ctx.out, type="clip", backbone=cfg.backbone, checkpoint="weights.pt")
    return info


# --------------------------------------------------------------------------- finetune


class ClassifierTask:
    """Fine-tuning of image tower + linear head with a classification loss (baseline, stage 1)."""

    def __init__(self, model: Classifier, cfg: TrainConfig, loss_fn) -> None:
        self.module = model
        self.cfg = cfg
        if cfg.freeze_encoder:
            for p in model.visual.parameters():
                p.requires_grad_(False)
        self.loss_fn = loss_fn

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": list(self.module.named_parameters())}]

    def set_mode(self) -> None:
        self.module.train()
        if not self.cfg.train_mode or self.cfg.freeze_encoder:
            self.module.visual.eval()

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loss_fn, "set_epoch"):  # an epoch-aware loss (LDAM-DRW)
            self.loss_fn.set_epoch(epoch, self.cfg.epochs)

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self.module(x), y)

    def validate(self) -> float | None:
        return None


@dataclass(frozen=True)
class FinetuneConfig:
    """Image tower + linear head trained on ``dataset`` with ``train`` and the classification loss
    registered as ``loss`` (:data:`ltrbench.registry.LOSSES`) with ``loss_params``."""

    dataset: Mapping[str, Any]  # RunContext.dataset_key()
    image: Mapping[str, Any]  # ImageSettings.key()
    train: TrainConfig
    loss: str = "ce"
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    head: str = "linear"  # linear | cosine (LDAM-DRW's NormedLinear: scale 1, its loss scales)
    head_scale: float = 1.0


@stage_kind("finetune", version="1", gpus=1.0, memory_gb=4.0, loader=True, reads=lambda c: Reads(splits=("train",)),
            config=FinetuneConfig, inputs=("weights",))
def finetune(ctx: StageContext) -> dict[str, Any]:
    conf: FinetuneConfig = ctx.config
    cfg = conf.train
    ds = dataset_of(ctx)
    img = image_settings(ctx)
    dev = device()
    src = ctx.input("weights")
    clip = load_model(src, "cpu", image_size=img.image_size)
    man = read_manifest(src)
    spec = BACKBONES.get(man["backbone"])
    model = Classifier(clip.visual, spec.embed_dim, ds.num_classes, conf.head, conf.head_scale).to(dev)
    del clip
    loader = train_loader(ds, img, sampler=cfg.sampler, batch_size=cfg.batch_size, seed=ctx.seed,
                          samples_per_class=cfg.samples_per_class)
    loss_fn = LOSSES.get(conf.loss)(ds.train_counts(), **dict(conf.loss_params))
    res = ctx.train(ClassifierTask(model, cfg, loss_fn), loader, cfg, device=dev, seed=ctx.seed)
    torch.save(model.state_dict(), ctx.out / "model.pt")
    extra = {"head": conf.head, "head_scale": conf.head_scale} if conf.head != "linear" else {}
    write_manifest(ctx.out, type="classifier", backbone=man["backbone"], checkpoint="model.pt",
                   embed_dim=spec.embed_dim, num_classes=ds.num_classes, **extra)
    return {**res.info, "loss": conf.loss, "params": parameter_counts(model, model.head)}


def parameter_counts(model: nn.Module, added: nn.Module | list) -> dict[str, int]:
    """What a training stage records (and its result shows): the parameters trained and those
    added to the CLIP tower (a head, PEFT modules), each counted once."""
    params = list(added.parameters()) if isinstance(added, nn.Module) else list(added)
    uniq = lambda ps: sum(p.numel() for p in {id(p): p for p in ps}.values())  # noqa: E731
    return {"trainable": uniq(p for p in model.parameters() if p.requires_grad), "added": uniq(params)}


# --------------------------------------------------------------------------- features


@torch.no_grad()
def encode_split(model: nn.Module, loader, dev: torch.device, progress: bool, desc: str):
    """Raw image embeddings (and a classifier's logits, else None) of every batch of ``loader``,
    and the batches' labels, in loader order."""
    model.eval().to(dev)
    feats, logits, labels = [], [], []
    is_clf = isinstance(model, Classifier)
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        labels.append(torch.as_tensor(y))
        x = x.to(dev, non_blocking=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            f = model.visual(x)
            if is_clf:
                logits.append(model.head(f).float().cpu())
        feats.append(f.float().cpu())
    f = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    lg = torch.cat(logits).numpy() if logits else None
    y = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64)
    return f, lg, y


def first_per_class(labels: np.ndarray, n: int | None) -> np.ndarray | None:
    """Indices of the first ``n`` items of each class in list order (None: keep all)."""
    if not n:
        return None
    seen: dict[int, int] = {}
    keep = []
    for i, lab in enumerate(labels.tolist()):
        if seen.get(lab, 0) < n:
            seen[lab] = seen.get(lab, 0) + 1
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Draw:
    """A features set drawn as one epoch of a training loader: ``sampler``, ``batch_size``."""

    sampler: str
    batch_size: int


@dataclass(frozen=True)
class FeaturesConfig:
    """The raw embeddings of ``split``: its first ``max_per_class`` images per class (None: all),
    drawn as one training epoch when ``draw`` is set (then the stage is planned with the run seed)."""

    dataset: Mapping[str, Any]
    image: Mapping[str, Any]
    split: str
    max_per_class: int | None = None
    draw: Draw | None = None


@stage_kind("features", version="1", gpus=0.5, memory_gb=3.0, loader=True, reads=lambda c: Reads(splits=(c.split,)),
            config=FeaturesConfig, inputs=("model",))
def features(ctx: StageContext) -> dict[str, Any]:
    """The split's images once through the evaluation loader (the feature cache), or, with a
    ``draw`` in the config, one pass of a training loader over them: N draws by ``draw.sampler``
    (with replacement for sqrt), the training transform, the last incomplete batch of
    ``draw.batch_size`` dropped, as the official iNat AnSS scores its images
    (docs/algorithms.md#anss-scoring-images)."""
    ds = dataset_of(ctx)
    img = image_settings(ctx)
    conf: FeaturesConfig = ctx.config
    split = conf.split
    dev = device()
    model = load_model(ctx.input("model"), "cpu", image_size=img.image_size)
    keep = first_per_class(ds.labels(split), conf.max_per_class)
    draw = conf.draw
    if draw:
        loader = train_loader(ds, img, sampler=draw.sampler, batch_size=int(draw.batch_size),
                              seed=ctx.seed, split=split, indices=keep, drop_last=True)
    else:
        loader = eval_loader(ds, split, img, indices=keep)
    f, lg, labels = encode_split(model, loader, dev, ctx.progress, f"features {split}")
    save_array(ctx.out, "feats", f.astype(np.float32))
    save_array(ctx.out, "labels", labels)
    if lg is not None:
        save_array(ctx.out, "logits", lg.astype(np.float32))
        clf = model.head
        save_array(ctx.out, "head_weight", clf.weight.detach().float().numpy())
        if getattr(clf, "bias", None) is not None:  # a cosine head has none
            save_array(ctx.out, "head_bias", clf.bias.detach().float().numpy())
    return {"n": int(f.shape[0]), "dim": int(f.shape[1]) if f.ndim == 2 else 0}


# --------------------------------------------------------------------------- text_features


@torch.no_grad()
def encode_texts(clip: nn.Module, backbone: str, sentences: list[str], dev: torch.device,
                 batch: int = 512, progress: bool = True) -> np.ndarray:
    tok = tokenizer(backbone)
    clip.eval().to(dev)
    out = []
    for i in tqdm(range(0, len(sentences), batch), desc="text features", disable=not progress, leave=False):
        t = tok(sentences[i : i + batch]).to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            out.append(clip.encode_text(t).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class TextFeaturesConfig:
    """The raw text embeddings of every sentence of corpus ``source`` of ``dataset``."""

    dataset: Mapping[str, Any]
    source: str = "wiki_prompt"


@stage_kind("text_features", version="1", gpus=0.5, memory_gb=3.0, reads=lambda c: Reads(corpus=c.source),
            config=TextFeaturesConfig, inputs=("clip",))
def text_features(ctx: StageContext) -> dict[str, Any]:
    ds = dataset_of(ctx)
    corpus = ds.corpus(ctx.config.source)
    sentences = [s for cls in corpus for s in cls]
    class_ids = np.concatenate([np.full(len(c), k, np.int64) for k, c in enumerate(corpus)])
    man = read_manifest(ctx.input("clip"))
    clip = load_model(ctx.input("clip"), "cpu")
    feats = encode_texts(clip, man["backbone"], sentences, device(), progress=ctx.progress)
    save_array(ctx.out, "text_feats", feats.astype(np.float32))
    save_array(ctx.out, "class_ids", class_ids)
    (ctx.out / "sentences.json").write_text(json.dumps(sentences))
    return {"sentences": len(sentences), "logit_scale": float(clip.logit_scale.detach().exp())}


# --------------------------------------------------------------------------- evaluate


@dataclass
class Prediction:
    """A method's output on the evaluation split.

    ``scores`` (N×C, arg-max = prediction) give the primary result. A method with several
    inference rules puts each rule's scores in ``rules`` (all are scored and recorded) and names the
    primary one; ``bucket_rule`` names the rule whose predictions give the many/medium/few numbers
    of the primary result when the method reports those from another rule than its overall.
    ``score_kind`` says what ``scores`` are (:data:`ltrbench.metrics.SCORE_KINDS`: ``logits``,
    ``probabilities`` or ``scores``), which decides how ``nll``, ``ece`` and the oracle prior
    correction read them; ``rule_kinds`` the same per rule (a rule not named: ``logits``).
    ``val_scores``/``val_labels``: the same scores on the val split, where the method has them;
    for logits, the evaluate stage then records the post-hoc logit adjustment (τ chosen on val) as
    the rule ``posthoc_la`` (unless the method records its own).
    """
    scores: np.ndarray
    labels: np.ndarray
    rules: Mapping[str, np.ndarray] = field(default_factory=dict)
    primary_rule: str | None = None
    bucket_rule: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    score_kind: str = "logits"
    rule_kinds: Mapping[str, str] = field(default_factory=dict)
    val_scores: np.ndarray | None = None
    val_labels: np.ndarray | None = None


def classifier_prediction(ctx: StageContext, scale: float = 1.0) -> Prediction:
    """A classifier's logits on the evaluation split (input ``features``) and on val (input ``val``,
    or ``features`` where val is the evaluation split), times ``scale`` (a cosine head whose loss
    applies the scale outputs cosines: its logits are scale · cos)."""
    ev = ctx.input("features")
    val = ctx.input("val") if ctx.has_input("val") else ev
    return Prediction(scores=scale * np.asarray(load_array(ev, "logits")), labels=load_array(ev, "labels"),
                      val_scores=scale * np.asarray(load_array(val, "logits")), val_labels=load_array(val, "labels"))


@dataclass(frozen=True)
class EvaluateConfig:
    """The scoring of method ``method`` on ``split`` of ``dataset``; ``params``: what the method's
    ``predict`` reads besides its inputs (e.g. VL-LTR's fusion α), by name; ``score_prior``: the
    class distribution the method's scores are calibrated to (:data:`ltrbench.metrics.SCORE_PRIORS`,
    :meth:`ltrbench.planner.Method.score_prior`), from which the oracle prior correction starts."""

    method: str
    dataset: Mapping[str, Any]
    split: str
    params: Mapping[str, Any] = field(default_factory=dict)
    score_prior: str = "train"


@stage_kind("evaluate", version="3", gpus=0.25, memory_gb=2.0, config=EvaluateConfig)
def evaluate(ctx: StageContext) -> dict[str, Any]:
    """A method's scores → ``result.json``: every metric (:data:`ltrbench.metrics.METRIC_NAMES`) of
    the primary result and of each rule, the bootstrap intervals of the primary result's metrics
    (:func:`ltrbench.stats.bootstrap`, seeded by the run's seed), the per-image predictions
    (label, prediction, log-probability of the true class, confidence; and the bucket rule's
    prediction) that paired comparisons resample, and the per-class accuracy after the oracle prior
    correction for each SADE test distribution (:func:`ltrbench.metrics.oracle_per_class`).
    The scores are read as the method declares them (``Prediction.score_kind``, recorded as
    ``score_kind``), and the oracle corrects from the prior they are calibrated to
    (``EvaluateConfig.score_prior``). Where the method gives its val scores and they are logits,
    the post-hoc logit adjustment is recorded as the rule ``posthoc_la``.

    Version 3: before it every score was read as logits and corrected from the training
    frequencies (VL-LTR's probabilities and zero-shot's similarities got a meaningless oracle, and a
    balanced method's was corrected twice). Version 2: version 1 recorded overall/many/medium/few
    and per-class accuracy only."""

    method = METHODS.get(ctx.config.method)()
    ds = dataset_of(ctx)
    pred: Prediction = method.predict(ctx, ds)
    counts = ds.train_counts()
    labels = np.asarray(pred.labels)
    rules, info = dict(pred.rules), dict(pred.info)
    if pred.val_scores is not None and pred.score_kind == "logits" and "posthoc_la" not in rules:
        rules["posthoc_la"], posthoc = posthoc_rule(pred.scores, pred.val_scores, pred.val_labels, counts)
        info.update(posthoc)
    pred = dataclasses.replace(pred, rules=rules, info=info)
    res = evaluation(pred.scores, labels, counts, pred.rules.get(pred.bucket_rule) if pred.bucket_rule else None,
                     seed=ctx.seed, score_kind=pred.score_kind, score_prior=ctx.config.score_prior)
    kinds = {name: pred.rule_kinds.get(name, "logits") for name in pred.rules}
    rules = {name: summarize(None, labels, counts, scores=np.asarray(s), score_kind=kinds[name])
             for name, s in pred.rules.items()}
    result = {
        **res,
        "rule_kinds": kinds,
        "rules": {k: v["metrics"] for k, v in rules.items()},
        "primary_rule": pred.primary_rule,
        "bucket_rule": pred.bucket_rule,
        "train_counts": [int(c) for c in counts],
        "eval_split": ctx.config.split,
        "num_eval": int(len(labels)),
        "info": pred.info,
    }
    (ctx.out / "result.json").write_text(json.dumps(result, indent=1, default=float))
    return {"overall": res["metrics"]["paper"]["overall"]}
