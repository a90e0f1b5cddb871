"""The plan, the second step of a request's route (resolve → plan → validate → execute → record):
resolved runs (:mod:`ltrbench.resolve`) → their stages. :func:`plan_runs` reads each run's data
set and asks its method plugin for the run's final ``evaluate`` stage; :func:`plan_request`
returns those runs and the de-duplicated DAG of every stage they need. The method builds its graph with
the :class:`RunContext` helpers below (and its family's own, e.g. ``methods/_cvlp.py``), so equal
prerequisites (one CLIP, one stage-1 model for four decoupled heads, one CVLP for Table 4's rows)
get equal keys and run once.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import torch

from .stage_kinds import (Draw, EvaluateConfig, FeaturesConfig, FinetuneConfig, TextFeaturesConfig,
                          clip_weights_stage)
from .backbones import check_input_size
from .config import BenchConfig, TrainConfig
from .data.base import LTDataset
from .data.loaders import DatasetRef, ImageSettings, resolve_dataset
from .data.samplers import SAMPLERS
from .errors import ConfigError
from .metrics import SAMPLER_PRIOR
from .registry import LOSSES, METHODS
from .resolve import RunSpec, resolve_configs  # noqa: F401  (resolve_configs: its old home)
from .stages import Stage, by_kind


class Method:
    """Base class of method plugins (one file per method under ``methods/``).

    ``plan(run)`` returns the run's ``evaluate`` stage; ``predict(ctx, ds)`` (called inside that
    stage, in whatever process runs it) returns a :class:`~ltrbench.stage_kinds.Prediction`.
    ``sections`` names the config sections the method reads (recorded with each result).
    ``default_run = False`` leaves the method out of a run that names no methods (``python
    run_bench.py``); ``--methods all`` and the tables that list it still run it. Write it, like
    ``description``, as a literal in the class body: the CLI reads it from the file unimported.
    """

    name: ClassVar[str] = ""
    sections: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    default_run: ClassVar[bool] = True

    def plan(self, run: "RunContext") -> Stage:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, ctx, ds: LTDataset):  # pragma: no cover - interface
        raise NotImplementedError

    def score_prior(self, run: "RunContext") -> str:
        """The class distribution this method's scores are calibrated to under ``run``'s config
        (:data:`ltrbench.metrics.SCORE_PRIORS`: ``train``, ``sqrt``, ``uniform``), from which the
        oracle prior correction of the shifted-distribution evaluation starts. Default: plain
        cross-entropy on the sampler of the first of ``sections`` with a ``train`` recipe
        (:data:`ltrbench.metrics.SAMPLER_PRIOR`), ``train`` where none has one. A method whose loss
        or head balances the classes returns ``uniform``."""
        for name in self.sections:
            train = getattr(run.cfg.section(name), "train", None)
            if isinstance(train, TrainConfig):
                return SAMPLER_PRIOR[train.sampler]
        return "train"


@dataclass
class RunContext:
    """One run being planned: its spec, resolved config, dataset and stage-building helpers."""

    spec: RunSpec
    cfg: BenchConfig
    ref: DatasetRef
    ds: LTDataset
    img: ImageSettings

    @property
    def seed(self) -> int:
        return self.spec.seed

    @property
    def eval_split(self) -> str:
        """The split results are reported on: the paper's, unless data.eval_split says otherwise."""
        split = self.cfg.data.eval_split or self.ds.eval_split
        if split not in self.ds.splits:
            raise ConfigError(f"data.eval_split={split!r}: {self.ds.name} has splits {', '.join(sorted(self.ds.splits))}.")
        return split

    @property
    def backbone(self) -> str:
        return self.cfg.backbone.name

    def env(self, **extra: Any) -> dict[str, Any]:
        return {"data_root": self.ref.root, "image": self.img.to_dict(), **extra}

    def dataset_key(self) -> dict[str, Any]:
        return self.ref.key()

    def stage(self, kind: str, config: Any, inputs: Mapping[str, Stage] | None = None, *, label: str = "",
              seeded: bool = True) -> Stage:
        """A stage of this run: ``config`` an instance of the kind's config class, ``inputs`` by
        name. ``seeded``: the stage draws random numbers per run, so the run's seed is part of its
        key and of its seed (:attr:`ltrbench.stages.Stage.seed`); False for a stage that is the
        same for every seed (then every seed's runs share it)."""
        return Stage(kind, config, dict(inputs or {}), self.env(), label=label,
                     run_seed=self.seed if seeded else None)

    # -- shared stages -------------------------------------------------------------------
    def clip_weights(self) -> Stage:
        """The backbone's starting weights: a tag or file, or a registered weights source's."""
        b = self.cfg.backbone
        env = self.env(**({"trust_torchscript": True} if b.trust_torchscript else {}))
        return clip_weights_stage(self.cfg, env)

    def finetune(self, src: Stage, train: TrainConfig, label: str, *, loss: str = "ce",
                 loss_params: dict[str, Any] | None = None, head: str = "linear", head_scale: float = 1.0) -> Stage:
        """Image tower of ``src`` + a linear head (``head="cosine"``: a cosine classifier of scale
        ``head_scale``), trained with ``train`` and the classification loss registered as ``loss``
        (:data:`ltrbench.registry.LOSSES`) with ``loss_params``."""
        make = LOSSES.get(loss)  # an unknown name fails at planning, not inside the stage
        if train.sampler not in SAMPLERS:  # a method may set the sampler from a section of its own
            raise ConfigError(f"finetune[{label}]: unknown sampler {train.sampler!r}; use one of "
                              f"{', '.join(SAMPLERS)} (--set <method>.sampler=... or <section>.train.sampler=...).")
        try:  # bad loss parameters (a variant, a loss type, γ < 0) fail at planning, not in three attempts:
            fn = make(self.ds.train_counts(), **dict(loss_params or {}))  # built, and called on one zero row
            fn(torch.zeros(1, self.ds.num_classes, dtype=torch.float64), torch.zeros(1, dtype=torch.long))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"finetune[{label}]: loss {loss!r} with parameters {dict(loss_params or {})}: {e}. "
                              "Fix the method's section with --set KEY=VALUE.") from None
        conf = FinetuneConfig(self.dataset_key(), self.img.key(), train, loss, dict(loss_params or {}), head,
                              float(head_scale))
        return self.stage("finetune", conf, {"weights": src}, label=label)

    def features(self, model: Stage, split: str, max_per_class: int | None = None, *,
                 draw: tuple[str, int] | None = None) -> Stage:
        """Raw image embeddings of ``split`` under the evaluation transform (the feature cache).

        ``max_per_class`` keeps the first N images of each class in list order (AnSS's scoring set).
        ``draw = (sampler, batch_size)`` feeds those images as one epoch of a training loader
        instead: N draws by the sampler, the training transform (``data.augment``), the last
        incomplete batch dropped (the official iNat AnSS scoring set,
        docs/algorithms.md#anss-scoring-images).
        """
        img = self.img if draw else dataclasses.replace(self.img, augment="none")
        conf = FeaturesConfig(self.dataset_key(), img.key(), split, int(max_per_class) if max_per_class else None,
                              Draw(draw[0], int(draw[1])) if draw else None)
        suffix = (f"≤{max_per_class}" if max_per_class else "") + (f"~{draw[0]}" if draw else "")
        return self.stage("features", conf, {"model": model}, label=f"{model.label}:{split}{suffix}",
                          seeded=bool(draw))

    def split_features(self, model: Stage) -> dict[str, Stage]:
        """``features`` stages of ``model`` by role (train/val/eval; eval is the reported split).

        Val falls back to the evaluation split where a data set has no val split (iNat: model
        selection on val, which is also its evaluation split), and so does eval under
        ``data.eval_split=val`` (recipe tuning).
        """
        val = "val" if "val" in self.ds.splits else self.eval_split
        return {"train": self.features(model, "train"), "val": self.features(model, val),
                "eval": self.features(model, self.eval_split)}

    def eval_and_val(self, model: Stage) -> dict[str, Stage]:
        """``features`` of the evaluation split and, named ``val``, of val when it is another split:
        the inputs of :func:`ltrbench.stage_kinds.classifier_prediction`."""
        val = "val" if "val" in self.ds.splits else self.eval_split
        out = {"features": self.features(model, self.eval_split)}
        if val != self.eval_split:
            out["val"] = self.features(model, val)
        return out

    def text_features(self, clip: Stage, source: str = "wiki_prompt") -> Stage:
        """The raw text embeddings of corpus ``source`` under the weights of ``clip``."""
        return self.stage("text_features", TextFeaturesConfig(self.dataset_key(), source), {"clip": clip},
                          label=f"{clip.label}:{source}", seeded=False)

    def evaluate(self, inputs: Mapping[str, Stage] | Sequence[Stage], **params: Any) -> Stage:
        """The run's final stage: the method's ``predict`` on ``inputs`` (by name: what
        ``ctx.input(name)`` reads; a plain list is named by kind), ``params`` in
        ``ctx.config.params``."""
        named = inputs if isinstance(inputs, Mapping) else by_kind(inputs)
        prior = METHODS.get(self.spec.method)().score_prior(self)
        conf = EvaluateConfig(self.spec.method, self.dataset_key(), self.eval_split, dict(params), prior)
        return self.stage("evaluate", conf, named, label=f"{self.spec.name}/seed{self.seed}")


@dataclass
class PlannedRun:
    spec: RunSpec
    cfg: BenchConfig
    target: Stage
    ctx: RunContext = field(repr=False)
    stages: list[Stage] = field(default_factory=list, repr=False)  # every stage the run needs, inputs first


def plan_runs(resolved: Sequence[tuple[RunSpec, BenchConfig]], *, progress: bool = False) -> list[PlannedRun]:
    """Resolve every run's data set and stages (the data set is read, the built-in world generated
    on first use, with a bar when ``progress``). Raises a user-facing error before anything runs."""
    out: list[PlannedRun] = []
    for spec, cfg in resolved:
        method = METHODS.get(spec.method)()
        ref, ds = resolve_dataset(spec.dataset, cfg, progress=progress)
        img = ImageSettings.resolve(cfg, cfg.backbone.name)
        check_input_size(cfg.backbone.name, img.image_size)
        ctx = RunContext(spec, cfg, ref, ds, img)
        out.append(PlannedRun(spec, cfg, method.plan(ctx), ctx))
    return out


def topological(targets: Iterable[Stage]) -> list[Stage]:
    """All stages needed by ``targets``, each key once, inputs before the stages that use them (a
    plan's order; :func:`ltrbench.execute.execute` orders any targets it is given the same way)."""
    order: list[Stage] = []
    seen: set[str] = set()

    def visit(s: Stage) -> None:
        if s.key in seen:
            return
        for i in s.inputs:
            visit(i)
        seen.add(s.key)
        order.append(s)

    for t in targets:
        visit(t)
    return order


def plan_request(resolved: Sequence[tuple[RunSpec, BenchConfig]], *,
                 progress: bool = False) -> tuple[list[PlannedRun], list[Stage]]:
    """The planned runs and every stage they need, each key once, inputs first."""
    runs = plan_runs(resolved, progress=progress)
    for r in runs:
        r.stages = topological([r.target])
    return runs, topological([r.target for r in runs])
