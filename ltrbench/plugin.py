"""The plugin API: the one module a method or data set plugin imports from ltrbench.

A plugin is one file in ``methods/`` or ``datasets/`` (code shared by a family of plugins sits
beside them in a file starting with ``_``, e.g. ``methods/_cvlp.py``, and imports only this module
too). Everything a plugin needs is here; the core behind it is free to move. Importing a plugin
file registers it.

Methods
-------
A method subclasses :class:`Method` (or :class:`HeadMethod`, for a head on cached features) and
registers itself::

    @METHODS.register("my_method")
    class MyMethod(Method):
        name = "my_method"
        sections = ("my_method", "baseline")   # the config sections it reads (recorded with results)
        def plan(self, run: RunContext) -> Stage: ...      # the run's final ``evaluate`` stage
        def predict(self, ctx: StageContext, ds: LTDataset) -> Prediction: ...

``plan`` builds the run's stage graph with the :class:`RunContext` helpers:
``run.clip_weights()``, ``run.finetune(src, train, label, loss=..., loss_params=...)``,
``run.features(model, split)``, ``run.split_features(model)`` (train/val/eval by role),
``run.text_features(clip, source)``, ``run.evaluate({name: stage, ...}, **params)``, and
``run.stage(kind, config, {name: stage}, label=..., seeded=True)`` for a kind of the plugin's own.
``run.cfg`` is the run's resolved configuration (``run.cfg.<section>``), ``run.ds`` its data set,
``run.seed`` its seed, ``run.eval_split`` the split results are reported on. Equal stages of
different runs have equal keys and run once. ``predict`` runs inside the ``evaluate`` stage: it
reads its inputs by the names given to ``run.evaluate`` (``ctx.input("features")``) and
``ctx.config.params``, and returns a :class:`Prediction` (scores N×C; more inference rules in
``rules``).

A :class:`HeadMethod` writes only ``fit_head(data: HeadData, cfg, env: HeadEnv) -> HeadFit`` (pure:
feature tensors in, eval-split scores out) and, in ``plan``, builds its feature inputs and calls
``self.plan_head(run, feats, extra)``; :class:`TrainedHeadMethod` trains a module it builds in
``make_head`` with the one training loop (:func:`train_head`).

Stage kinds
-----------
A kind of the plugin's own is a function of a :class:`StageContext`, registered with
:func:`stage_kind`, declaring its config as a frozen dataclass and the names of its inputs::

    @dataclass(frozen=True)
    class MyConfig:
        dataset: Mapping[str, Any]   # run.dataset_key()
        image: Mapping[str, Any]     # run.img.key()
        train: TrainConfig

    @stage_kind("my_kind", config=MyConfig, inputs=("model", "text?"), gpus=1.0, loader=True,
                reads=lambda c: Reads(splits=("train",)))
    def my_kind(ctx: StageContext) -> dict:
        c: MyConfig = ctx.config
        model = load_model(ctx.input("model"), "cpu")
        loader = train_loader(dataset_of(ctx), image_settings(ctx), sampler=c.train.sampler,
                              batch_size=c.train.batch_size, seed=ctx.seed)
        res = ctx.train(task, loader, c.train, device=device(), seed=ctx.seed)
        ...                                   # write files into ctx.out
        return res.info                       # recorded in stage.json

planned as ``run.stage("my_kind", MyConfig(run.dataset_key(), run.img.key(), train), {"model": m})``.
The engine builds the stage's key from the kind, its version, every field of the config, the run
seed (for a ``seeded`` stage) and the keys of the inputs by name: a plugin never writes a key, and
a field that does not change the output does not belong in the config (set it to its default, as
``LGRConfig.stage_config`` does). Bump ``version`` when the kind's output changes. ``ctx.seed`` is
the stage's seed, from its kind and its run's seed only (never a config value: two rows of a sweep
draw the same initial weights and data order); the engine seeds python, numpy and torch with it
before the function runs. ``gpus``, ``memory_gb`` and ``loader`` are what the kind asks of a
scheduler; ``reads`` what it reads of the data set (validated before any work).

Config sections
---------------
A frozen dataclass registered with :func:`register_section` becomes ``run.cfg.<name>`` and the
``--set <name>.<field>=...`` overrides, with defaults from the dataclass and the data set's YAML
under ``configs/``. A ``check()`` method raising :class:`ConfigError` validates it before any
work; a :class:`TrainConfig` field is range-checked wherever it sits. The conformance test runs
every method with its training cut short by a rule (``ltrbench.config.tiny_overrides``): a section's
``tiny = staticmethod(lambda: {"train.epochs": 2})`` (field paths → values) where it needs more than
the default, else every ``TrainConfig`` field of the section at 1 epoch of batch 64. A new method
touches no other file: the key-pinning test pins only the plans its data file names.

Data sets
---------
A data set plugin subclasses :class:`DatasetPlugin`, registers with ``@DATASETS.register(name)``
and returns an :class:`LTDataset` (split lists of :class:`Split` pairs, class names, corpus).

Registries
----------
:data:`METHODS`, :data:`DATASETS`, :data:`BACKBONES` (:class:`BackboneSpec`), :data:`LOSSES` (a
loss factory ``make(train_counts, **params) -> loss(logits, targets)``, used by ``finetune``'s
``loss=``), :data:`WEIGHTS` (generated starting weights by ``backbone.pretrained`` tag),
:data:`STAGES`, :data:`SECTIONS`.

Data-parallel training
----------------------
``train.devices: N`` runs a training stage on N workers (the Ray executor; :mod:`ltrbench.parallel`),
each on its slice of every global batch, through the one loop. A task's loss that is a mean over
samples needs nothing more. A loss of the whole batch at once (a contrastive loss) sets
``whole_batch = True`` on its task (no micro-batches, ``train.accumulate``) and gathers what it
contrasts with :func:`gather` (embeddings with their gradient, labels); a random draw per sample
is made with :func:`global_rand`, so N workers draw what one process draws (``methods/_cvlp.py``).

Errors are for people: raise :class:`ConfigError` for a bad setting, :class:`DataError` for bad
data, saying what was wrong, where, and what to do.
"""
from __future__ import annotations

from . import peft
from .backbones import BackboneSpec, create_clip, tokenizer
from .config import BenchConfig, TrainConfig, from_dict, register_section
from .data.base import DatasetPlugin, LTDataset, Split
from .data.batched import BatchLoader
from .data.corpus import SOURCES
from .data.images import open_rgb
from .data.lists import path_problem, read_list, read_split_lists
from .data.loaders import DatasetRef, ImageSettings, crops_loader, eval_loader, open_dataset, train_loader
from .data.samplers import SAMPLERS, InstanceSampler, build_sampler, sampler_key
from .devices import stage_device
from .distributed import Shard, gather, global_rand, shard
from .errors import ConfigError, DataError, LtrBenchError, PluginError
from .fingerprints import file_sha256
from .head_fit import (HeadData, HeadEnv, HeadFit, HeadMethod, HeadStageConfig, TrainedHeadMethod, head_logits,
                       load_head_data, train_head)
from .heads import (ANCHOR_MODES, DEFAULT_TAUS, NCM_DIST_TYPES, NCM_FEAT_TYPES, CosineHead, CRTHead, LGRHead, LWSHead,
                    anss_scores, fuse_logits, knn_predict, ncm_logits, select_anchors, select_tau, tau_normalize)
from .losses import DISTILL_TYPES, cvlp_loss, loss_prior, posthoc_rule, soft_cross_entropy
from .metrics import SAMPLER_PRIOR, SCORE_KINDS, SCORE_PRIORS
from .models import Classifier, load_model, read_manifest, write_manifest
from .paths import cache_root
from .planner import Method, PlannedRun, RunContext, RunSpec
from .safeio import refuse_link, write_atomic
from .registry import BACKBONES, DATASETS, LOSSES, METHODS, SECTIONS, STAGES, WEIGHTS
from .stage_kinds import (ClassifierTask, ClipWeightsConfig, Draw, EvaluateConfig, FeaturesConfig, FinetuneConfig,
                          Prediction, TextFeaturesConfig, classifier_prediction, dataset_of, device, encode_texts,
                          image_settings, load_array, parameter_counts, save_array)
from .stages import Reads, Stage, StageContext, StageKind, config_value, stage_kind
from .train import FitResult, TrainTask, seed_everything
from .validate import train_problems

__all__ = [
    # methods and the run context
    "Method", "HeadMethod", "TrainedHeadMethod", "RunContext", "RunSpec", "PlannedRun", "Prediction",
    "classifier_prediction",
    "HeadData", "HeadEnv", "HeadFit", "HeadStageConfig", "head_logits", "load_head_data", "train_head",
    # stages
    "Stage", "StageContext", "StageKind", "Reads", "stage_kind", "config_value",
    "ClassifierTask", "encode_texts", "parameter_counts", "crops_loader", "CosineHead", "peft",
    "ClipWeightsConfig", "FinetuneConfig", "FeaturesConfig", "Draw", "TextFeaturesConfig", "EvaluateConfig",
    "dataset_of", "device", "image_settings", "load_array", "save_array", "stage_device",
    # config
    "BenchConfig", "TrainConfig", "register_section", "from_dict", "train_problems",
    # registries
    "METHODS", "DATASETS", "BACKBONES", "LOSSES", "WEIGHTS", "STAGES", "SECTIONS",
    # errors
    "LtrBenchError", "ConfigError", "DataError", "PluginError",
    # data records and loading
    "DatasetPlugin", "LTDataset", "Split", "DatasetRef", "ImageSettings", "open_dataset", "read_list",
    "read_split_lists", "path_problem", "SOURCES", "open_rgb", "train_loader", "eval_loader", "BatchLoader",
    "SAMPLERS", "InstanceSampler", "build_sampler", "sampler_key",
    # models, training, building blocks
    "BackboneSpec", "create_clip", "tokenizer", "Classifier", "load_model", "read_manifest", "write_manifest",
    "FitResult", "TrainTask", "seed_everything", "cache_root", "refuse_link", "write_atomic", "file_sha256",
    # data-parallel training (train.devices): whole-batch losses gather, per-sample draws are global
    "Shard", "shard", "gather", "global_rand",
    "DISTILL_TYPES", "cvlp_loss", "posthoc_rule", "soft_cross_entropy",
    # what a prediction's scores are and the prior they are calibrated to (Prediction.score_kind,
    # Method.score_prior): how nll, ece and the oracle prior correction read them
    "SCORE_KINDS", "SCORE_PRIORS", "SAMPLER_PRIOR", "loss_prior",
    "ANCHOR_MODES", "DEFAULT_TAUS", "NCM_DIST_TYPES", "NCM_FEAT_TYPES", "CRTHead", "LGRHead", "LWSHead",
    "anss_scores", "fuse_logits", "knn_predict", "ncm_logits", "select_anchors", "select_tau", "tau_normalize",
]
