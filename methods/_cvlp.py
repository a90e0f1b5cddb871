"""CVLP: class-wise visual-linguistic pre-training (docs/algorithms.md#cvlp), the ``cvlp`` stage.

Code of the VL-LTR family of plugins: ``vlltr`` (its stage 1), ``knn`` and ``fc`` (Table 4 rows
5–6) plan their encoder with :func:`encoder_stage`, so one CVLP run serves all of them. The student starts from the CLIP weights (or random weights, Table 4 row 3); every
image is paired with a fresh random sentence of its class at every step (prompts + wiki, no
AnSS filtering); the loss is :func:`ltrbench.losses.cvlp_loss` (class-wise contrastive loss with
soft same-class targets and 0.1 smoothing, both directions averaged, plus β × distillation from a
frozen copy of the starting CLIP, which uses its own logit scale). The learnable temperature
starts from the checkpoint's (ln 100 for OpenAI CLIP) and is neither clamped nor excluded from
weight decay. The square-root sampler is reseeded every epoch (the official single-process run is
not: docs/algorithms.md#square-root-sampler, a deliberate fix). ``train.train_mode: false`` keeps
BatchNorm frozen, as the official ImageNet-LT and Places-LT configs do.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from ltrbench.plugin import (ConfigError, DISTILL_TYPES, Reads, RunContext, Stage, StageContext, TrainConfig,
    create_clip, cvlp_loss, dataset_of, device, gather, global_rand, image_settings, load_model, parameter_counts,
    read_manifest, register_section, stage_kind, tokenizer, train_loader, write_manifest)

ENCODERS = ("cvlp", "clip")  # the frozen encoders KNN and FC can use


@register_section("cvlp")
@dataclass(frozen=True)
class CVLPConfig:
    """Stage 1 of VL-LTR. Defaults: ImageNet-LT R50 (lr 5e-5 at global batch 2048, 50 epochs)."""

    enabled: bool = True  # false: skip CVLP, LGR/AnSS on the raw CLIP weights (Table 4 row 2)
    init: str = "clip"  # clip | random (Table 4 row 3: random weights, τ₀ = 0.07)
    distill: str = "logits"  # logits | feature | none (Table 9; feature is an assumption, see losses)
    beta: float = 0.5  # distillation weight: Table 9's λ, the official β
    smoothing: float = 0.1
    source: str = "wiki_prompt"  # wiki_prompt | prompt_only (Table 10): the corpus of CVLP and AnSS
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=50, lr=5e-5, batch_size=2048, ref_batch_size=2048, warmup_epochs=5, min_lr=0.0,
        sampler="sqrt", train_mode=False))

    def check(self) -> None:
        if self.init not in ("clip", "random"):
            raise ConfigError(f"cvlp.init must be clip or random, got {self.init!r}.")
        if self.distill not in DISTILL_TYPES:
            raise ConfigError(f"cvlp.distill must be one of {', '.join(DISTILL_TYPES)}, got {self.distill!r}.")
        if not 0.0 <= self.beta <= 1.0:
            raise ConfigError(f"cvlp.beta must lie in [0, 1], got {self.beta}.")
        if self.source not in ("wiki_prompt", "prompt_only"):
            raise ConfigError(f"cvlp.source must be wiki_prompt or prompt_only, got {self.source!r}.")
        if self.train.accumulate > 1:
            raise ConfigError(f"cvlp.train.accumulate={self.train.accumulate}: CVLP's class-wise contrastive loss and "
                              "its distillation need the whole batch at once (every image against every sentence), "
                              "so micro-batches would change the loss; keep cvlp.train.accumulate=1 and spread the "
                              "batch over GPUs with cvlp.train.devices instead (e.g. --set cvlp.train.devices=8).")


@dataclass(frozen=True)
class CVLPStageConfig:
    """The ``cvlp`` stage's config: the run's data set and image settings, and the ``cvlp``
    section with the distillation that actually runs (``none`` where β = 0)."""

    dataset: Mapping[str, Any]
    image: Mapping[str, Any]
    cvlp: CVLPConfig


def cvlp_stage(run: RunContext) -> Stage:
    """The CVLP stage of a run (or the raw CLIP weights when ``cvlp.enabled`` is false)."""
    c: CVLPConfig = run.cfg.cvlp
    c.check()
    clip = run.clip_weights()
    if not c.enabled:
        return clip
    distill = "none" if c.beta == 0 else c.distill
    conf = CVLPStageConfig(run.dataset_key(), run.img.key(), replace(c, distill=distill))
    label = f"cvlp{'' if c.init == 'clip' else '-random'}-{distill}{c.beta:g}-{c.source}"
    return run.stage("cvlp", conf, {"clip": clip}, label=label)


def encoder_stage(run: RunContext, encoder: str) -> Stage:
    """The frozen encoder of KNN and FC: ``cvlp`` (Table 4 rows 5–6) or the raw ``clip`` weights."""
    if encoder == "clip":
        return run.clip_weights()
    if encoder == "cvlp":
        return cvlp_stage(run)
    raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}.")


class CVLPTask:
    """One CVLP step: sample a sentence per image, student and teacher embeddings, L_pre.

    The loss contrasts every image of the batch with every sentence (``whole_batch``): the loop
    refuses micro-batches for it, and on N data-parallel devices the student's and the teacher's
    embeddings and the labels are gathered from every device (with the student's gradient, as the
    official ``GatherLayer``), so the loss is the global batch's, equal on every device. The
    sentence of each image is drawn for the whole global batch on every device (``global_rand``):
    N devices draw the sentences one process draws."""

    whole_batch = True

    def __init__(self, student, teacher, tokens: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor,
                 c: CVLPConfig, distill: str) -> None:
        self.module = student
        self.teacher = teacher
        self.tokens, self.offsets, self.counts = tokens, offsets, counts
        self.c = c
        self.distill = distill

    def param_groups(self):
        return [{"params": list(self.module.named_parameters())}]

    def set_mode(self) -> None:
        self.module.train(self.c.train.train_mode)
        if self.teacher is not None:
            self.teacher.eval()

    def loss(self, batch) -> torch.Tensor:
        x, y = batch
        yc = y.cpu()
        # A fresh uniform draw among all sentences of the image's class, at every step
        # (docs/algorithms.md#cvlp-batches), drawn for the global batch on every data-parallel worker.
        pick = self.offsets[yc] + (global_rand(len(yc)) * self.counts[yc]).long()
        t = self.tokens[pick].to(x.device, non_blocking=True)
        img = gather(self.module.encode_image(x))
        txt = gather(self.module.encode_text(t))
        kw: dict[str, Any] = {}
        if self.distill != "none":
            with torch.no_grad():
                kw = {"teacher_image_emb": gather(self.teacher.encode_image(x)),
                      "teacher_text_emb": gather(self.teacher.encode_text(t)),
                      "teacher_logit_scale": self.teacher.logit_scale.exp()}
        return cvlp_loss(img, txt, gather(y), self.module.logit_scale.exp(), distill=self.distill, beta=self.c.beta,
                         smoothing=self.c.smoothing, **kw).total

    def validate(self):
        return None


@stage_kind("cvlp", version="2", gpus=1.0, memory_gb=6.0, loader=True,
            reads=lambda c: Reads(splits=("train",), corpus=c.cvlp.source), config=CVLPStageConfig, inputs=("clip",))
def cvlp(ctx: StageContext) -> dict[str, Any]:
    c: CVLPConfig = ctx.config.cvlp
    distill = c.distill
    ds = dataset_of(ctx)
    img = image_settings(ctx)
    dev = device()
    man = read_manifest(ctx.input("clip"))
    backbone = man["backbone"]
    start = load_model(ctx.input("clip"), "cpu", image_size=img.image_size)
    student = start if c.init == "clip" else create_clip(backbone, None, image_size=img.image_size)
    teacher = None
    if distill != "none":
        teacher = copy.deepcopy(start).eval().requires_grad_(False).to(dev)
    corpus = ds.corpus(c.source)
    counts = torch.tensor([len(s) for s in corpus])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])
    tokens = tokenizer(backbone)([s for cls in corpus for s in cls])
    student.to(dev)
    loader = train_loader(ds, img, sampler=c.train.sampler, batch_size=c.train.batch_size, seed=ctx.seed)
    res = ctx.train(CVLPTask(student, teacher, tokens, offsets, counts, c, distill), loader, c.train, device=dev,
                    seed=ctx.seed)
    torch.save({k: v.cpu() for k, v in student.state_dict().items()}, ctx.out / "weights.pt")
    write_manifest(ctx.out, type="clip", backbone=backbone, checkpoint="weights.pt")
    # version 2: records the parameters trained (the whole student CLIP; nothing added to it)
    return {**res.info, "sentences": int(counts.sum()), "logit_scale": float(student.logit_scale.detach().exp()),
            "params": parameter_counts(student, [])}
