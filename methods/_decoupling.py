"""The decoupling family (Kang et al.; docs/algorithms.md#decoupling): the shared stage-1 model and the
official decoupling code's recipes.

Code of the plugins ``crt``, ``lws``, ``ncm`` and ``tau_norm``: the ``stage1`` config section (the
one instance-balanced joint model they all start from), :func:`stage1_features` (that model's
cached features by role, planned identically by the four methods so it is trained once) and
:func:`decoupling_recipe` (the decoupling code's stage-2 optimiser for cRT and LWS).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ltrbench.plugin import RunContext, Stage, TrainConfig, register_section


@register_section("stage1")
@dataclass(frozen=True)
class Stage1Config:
    """The decoupling methods' shared stage-1 model (docs/algorithms.md#stage-1-model).

    ASSUMPTION (logged with every result's config): for the paper's R-50* rows, the paper only says
    "initialized with CLIP pre-trained weights". The recipe here is the recommended one: the CLIP
    image encoder + Linear(D→C), fully fine-tuned jointly with instance-balanced sampling, the
    feature being the encoder's raw output (D = 1024 attention-pool for RN50); the decoupling code's joint recipe
    for the rest: SGD momentum 0.9, lr 0.2 at batch 512, weight decay 5e-4 (iNat 1e-4), cosine
    to 0 stepped at epoch start, 90 epochs.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=90, lr=0.2, batch_size=512, ref_batch_size=512, optimizer="sgd", weight_decay=5e-4,
        momentum=0.9, warmup_epochs=0, min_lr=0.0, schedule_shift=1, sampler="instance"))


def decoupling_recipe(epochs: int, select_best: bool = True) -> TrainConfig:
    """The official decoupling code's stage-2 optimiser, the ImageNet-LT row of docs/algorithms.md#crt (cRT, LWS):
    SGD momentum 0.9, lr 0.2 at batch 512, weight decay 5e-4, cosine to 0 stepped at epoch start,
    class-aware sampler (4 per class). Its loop keeps the epoch with the best val top-1 for every
    stage-2 run (docs/algorithms.md#model-selection)."""
    return TrainConfig(epochs=epochs, lr=0.2, batch_size=512, ref_batch_size=512, optimizer="sgd",
                       weight_decay=5e-4, momentum=0.9, warmup_epochs=0, min_lr=0.0, schedule_shift=1,
                       sampler="class_aware", samples_per_class=4, select_best=select_best)


def decoupling_tiny() -> dict[str, object]:
    """The test size of a stage-2 recipe (the sections' ``tiny()``): 2 epochs, since the
    decoupling schedule runs its last epoch at lr 0, of batch 32."""
    return {"train.epochs": 2, "train.batch_size": 32}


def stage1_features(run: RunContext) -> dict[str, Stage]:
    """The shared stage-1 ``finetune`` and its ``features`` stages, by role (train/val/eval).

    Built from the ``stage1`` section alone, so crt, lws, ncm and tau_norm get equal keys and the
    model is trained once.
    """
    model = run.finetune(run.clip_weights(), run.cfg.stage1.train, label="stage1")
    return run.split_features(model)
