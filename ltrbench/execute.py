"""Executors of the stage DAG: inline (in this process, in order) or on Ray.

This is the only module that imports ray. Both executors call the same plain function,
:func:`ltrbench.stages.run_stage`, on picklable arguments (a stage and the cache path), so a
stage never depends on running in the driver's process. A finished stage (its ``stage.json``
exists and its manifest verifies) is skipped; a stage shared by several runs is one node and runs
once.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from . import head_fit, stage_kinds  # noqa: F401  (the core stage kinds register themselves)
from .errors import ConfigError
from .registry import STAGES
from .stages import Stage, read_info, run_stage, topological, verify

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "ray")


def execute(targets: Sequence[Stage], cache: Path, *, executor: str = "inline", progress: bool = True,
            ray_address: str | None = None) -> dict[str, dict[str, Any]]:
    """Run every stage the targets need; return ``{key: info}`` and, per stage, whether it ran."""
    order = topological(targets)
    # Verified, not only present: a stage whose files fail their manifest is rebuilt (run_stage
    # moves it aside under its lock); the hashes are computed once per process.
    todo = [s for s in order if not verify(cache, s)]
    log.info("%d stages needed, %d cached, %d to run", len(order), len(order) - len(todo), len(todo))
    if executor == "inline":
        ran = _inline(todo, cache, progress)
    elif executor == "ray":
        ran = _ray(order, todo, cache, progress, ray_address)
    else:
        raise ConfigError(f"Unknown executor {executor!r}; use inline or ray.")
    infos = {s.key: {**read_info(cache, s), "ran": s.key in ran} for s in order}
    return infos


def _inline(todo: list[Stage], cache: Path, progress: bool) -> set[str]:
    ran = set()
    for s in todo:
        if progress:
            print(f"· {s.describe()}", flush=True)
        run_stage(s, cache, progress)
        ran.add(s.key)
    return ran


def _ray(order: list[Stage], todo: list[Stage], cache: Path, progress: bool, address: str | None) -> set[str]:
    import ray  # here, not at the top: importing ray takes about a second, which inline runs never need

    if not ray.is_initialized():
        # Embedded local Ray by default (all local CPUs and GPUs); --ray-address joins a cluster,
        # where the cache must be on storage every node sees.
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("LTRBENCH_", "TQDM_"))}})
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    remote = ray.remote(_remote_stage)
    refs: dict[str, Any] = {}
    todo_keys = {s.key for s in todo}
    for s in order:
        if s.key not in todo_keys:
            continue
        deps = [refs[i.key] for i in s.inputs if i.key in refs]
        gpus = STAGES.get(s.kind).gpus if has_gpu else 0
        refs[s.key] = remote.options(num_gpus=gpus, num_cpus=1, name=s.describe()).remote(
            s, str(cache), progress, *deps)
    if progress:
        print(f"· Ray: {len(refs)} stages submitted", flush=True)
    ray.get(list(refs.values()))
    return set(refs)


def _remote_stage(stage: Stage, cache: str, progress: bool, *deps: Any) -> str:
    """A Ray task: ``deps`` are upstream results, passed only so Ray orders the tasks."""
    run_stage(stage, cache, progress=False)
    return stage.key
