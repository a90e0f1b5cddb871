"""Executors of the stage DAG: inline (in this process, in order) or on Ray.

The execution layer: this module, :mod:`ltrbench.cluster` (connecting to Ray), :mod:`ltrbench.sweep`
and :mod:`ltrbench.parallel` (data-parallel stages on Ray Train) are the only modules that import
ray. Both executors run one attempt of a
stage the same way, :func:`attempt_stage` around :func:`ltrbench.stages.run_stage` (picklable
arguments: a stage, the cache path), so a stage never depends on running in the driver's process.
A finished stage (its ``stage.json`` exists and its manifest verifies) is skipped; a stage shared by several runs is one node
of the DAG and runs once. What the executors share:

* **Failure isolation and retries.** A stage that raises is tried again, up to ``retries`` more
  times (a training stage resumes from its last checkpoint, kept in its ``.partial`` folder), with
  each attempt's error logged; a user error (:class:`~ltrbench.errors.LtrBenchError`: a bad config,
  missing data) is not retried. A stage that still fails fails only the stages that need it; every
  other stage runs. :class:`Execution` says which stages finished and which failed, with the error's
  last line and the stage's log (``<cache>/<kind>/<key>.log``: a header per attempt, saying where it
  ran, and the full traceback of each failure).
* **Devices.** A stage computes on the CPU when it reserved no GPU (``StageKind.gpus`` is 0, or GPUs
  are not used: ``device="cpu"``, or an embedded run on a machine without CUDA); otherwise on what
  ``device`` says (``auto``: CUDA where the process sees it). The choice is made in the process that
  runs the stage (:mod:`ltrbench.devices`).
* **Progress**, printed by the driver: a line per stage start (kind, label, node, device) and finish
  or failure, each with the count of finished, running and pending stages, and a status line when
  nothing happened for a minute.

On Ray the driver submits a stage when its inputs have finished, as a generator task that first
reports where it started and then its outcome. A worker or node that dies (out of memory, a lost
machine) fails that attempt like an exception does; Ray's own retries are off, so ``retries``
counts every attempt. A stage that reserved no GPU sees none (``CUDA_VISIBLE_DEVICES=""``). Each task asks for what its stage uses
(:func:`stage_resources`): CPUs = the stage's loader workers + 1 (or ``cpus_per_stage``), with
torch's threads set to match; a host-memory estimate per stage kind; GPUs from the stage kind and
config. Which stages ask for GPUs: on the embedded cluster the machine is known, so only where it
has CUDA; on an external cluster always (an autoscaler then adds GPU nodes), unless
``device="cpu"``. Worker processes are reused from stage to stage (imports cost seconds) except
for GPU stages, which get a fresh process each, an actor ended when the stage has reported (as
Ray does for GPU tasks, ray-project/ray#29624: a CUDA context keeps its memory and its device
until the process ends).

A data-parallel stage (``train.devices`` N > 1, :func:`ltrbench.stages.stage_devices`) runs only on
Ray: the inline executor refuses it before any stage runs (:func:`check_inline`). On Ray its task
reserves nothing and launches a Ray Train group of N workers, each asking for what the stage's own
task would (:func:`stage_resources`: CPUs, memory, one GPU where GPUs are used), reserved together
in one placement group (:mod:`ltrbench.parallel`); its start line names the N workers and its
finish line each worker's rank, host and device and the per-device batch. Group restarts after a
worker's death count against the stage's ``retries``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from . import head_fit, stage_kinds  # noqa: F401  (the core stage kinds register themselves)
from .cluster import GPU_TASK_ENV, Connection, connect_for, forwarded_env
from .cluster import task_env as _task_env
from .devices import DEVICE_CHOICES, DEVICE_ENV, describe, stage_device
from .errors import ConfigError, LtrBenchError
from .registry import STAGES
from .safeio import StorageError, open_append
from .parallel import describe_workers, group_stage
from .planner import topological
from .stages import Stage, artifact_dir, read_info, run_stage, stage_devices, verify

log = logging.getLogger(__name__)

EXECUTORS = ("inline", "ray")
#: Host memory asked per DataLoader worker process, on top of the stage kind's estimate.
MEMORY_PER_LOADER_WORKER_GB = 0.5
_HEARTBEAT_S = 60.0


@dataclass(frozen=True)
class ExecOptions:
    """How to execute a plan (nothing here enters a stage key)."""

    executor: str = "inline"
    address: str | None = None  # a Ray cluster's address; None with executor="ray": an embedded one
    retries: int = 2  # more attempts after a stage's first failure
    device: str = "auto"  # auto | cpu | cuda
    ship_code: bool = True  # send the project's code to the Ray workers
    cpus_per_stage: int | None = None  # None: the stage's loader workers + 1
    progress: bool = True
    out: Path | None = None  # the results folder, checked from the workers of an external cluster

    def check(self) -> "ExecOptions":
        if self.executor not in EXECUTORS:
            raise ConfigError(f"Unknown executor {self.executor!r}; use inline or ray.")
        if self.device not in DEVICE_CHOICES:
            raise ConfigError(f"Unknown device {self.device!r}; use one of {', '.join(DEVICE_CHOICES)}.")
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries}.")
        if self.cpus_per_stage is not None and self.cpus_per_stage < 1:
            raise ConfigError(f"cpus_per_stage must be at least 1, got {self.cpus_per_stage}.")
        return self


@dataclass
class StageFailure:
    """A stage that failed on every attempt."""

    kind: str
    label: str
    key: str
    error: str  # the last line of the last attempt's error
    log: str  # the stage's log in the cache: every attempt, with tracebacks
    attempts: int
    where: str = ""  # host and node of the last attempt
    worker_log: str | None = None  # the Ray worker's own log on that node, where known

    def describe(self) -> str:
        return f"{self.kind}[{self.label or self.key[:8]}]"


@dataclass
class Execution:
    """What an execution did: every stage needed, the finished ones' infos, the failed ones."""

    stages: list[Stage]
    infos: dict[str, dict[str, Any]]  # key → stage.json + {"ran": computed in this execution}
    failures: dict[str, StageFailure] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def executed(self) -> int:
        return sum(bool(i["ran"]) for i in self.infos.values())

    def failure_of(self, stages: Sequence[Stage]) -> StageFailure | None:
        """The failed stage that kept a run from finishing (the first of its inputs), or None;
        ``stages``: every stage the run needs, inputs first (``PlannedRun.stages``)."""
        for s in stages:
            if s.key in self.failures:
                return self.failures[s.key]
        return None


def execute(stages: Sequence[Stage], cache: Path, *, done: Iterable[str] | None = None,
            options: ExecOptions | None = None, executor: str = "inline", progress: bool = True,
            ray_address: str | None = None, retries: int = 2, device: str = "auto", ship_code: bool = True,
            cpus_per_stage: int | None = None, out: Path | None = None) -> Execution:
    """Run ``stages``, isolating failures; see the module's docstring.

    ``stages``: the stages to have (any targets: their inputs are added, inputs first).
    ``done``: the keys already cached and verified; ``None`` asks the cache here. ``options``
    replaces the keywords after it. Orders the stages, connects to Ray where it runs them
    (:func:`ltrbench.cluster.connect_for`) and hands over to :func:`run_ordered`, which
    :func:`ltrbench.run` calls itself with its plan's order, cache state and connection."""
    opts = (options or ExecOptions("ray" if ray_address else executor, ray_address, retries, device, ship_code,
                                   cpus_per_stage, progress, out)).check()
    order = topological(stages)  # inputs first
    if done is None:
        done = {s.key for s in order if verify(cache, s)}
    done = frozenset(done)
    conn = None
    if opts.executor == "ray" and any(s.key not in done for s in order):
        conn = connect_for(opts.address, cache, ship_code=opts.ship_code, out=opts.out)
    return run_ordered(order, cache, done, opts, conn)


def run_ordered(order: Sequence[Stage], cache: Path, done: Iterable[str], opts: ExecOptions,
                conn: Connection | None = None) -> Execution:
    """The execute step: run the stages of ``order`` (every stage needed, inputs first: a plan's
    ``stages``) whose keys are not in ``done``; ``conn``: the Ray the stages run on (the ``ray``
    executor, :func:`ltrbench.cluster.connect_for`), connected before any stage is submitted."""
    t0 = time.time()
    dag = _Dag(list(order), frozenset(done))
    log.info("%d stages needed, %d cached, %d to run", len(dag.order), len(dag.order) - dag.todo, dag.todo)
    if dag.todo and opts.executor == "ray":
        if conn is None:
            raise ValueError("run_ordered: the ray executor needs the connection (ltrbench.cluster.connect_for)")
        failures = _ray(dag, Path(cache), opts, conn)
    elif dag.todo:
        failures = _inline(dag, Path(cache), opts)
    else:
        failures = {}
    infos = {s.key: {**read_info(cache, s), "ran": s.key in dag.ran} for s in dag.order if dag.state[s.key] == "done"}
    return Execution(dag.order, infos, failures, round(time.time() - t0, 1))


# --------------------------------------------------------------------------- the DAG's state


class _Dag:
    """Which stages are done, to do, queued, running, failed or blocked by a failed input."""

    def __init__(self, order: list[Stage], done: frozenset[str]) -> None:
        self.order = order
        self.state = {s.key: "done" if s.key in done else "todo" for s in order}
        self.todo = sum(v == "todo" for v in self.state.values())
        self.ran: set[str] = set()
        self.users: dict[str, list[Stage]] = {}
        for s in order:
            for i in s.inputs:
                self.users.setdefault(i.key, []).append(s)

    def ready(self) -> list[Stage]:
        """Stages to do whose inputs have all finished, in plan order."""
        return [s for s in self.order if self.state[s.key] == "todo"
                and all(self.state[i.key] == "done" for i in s.inputs)]

    def finish(self, key: str) -> None:
        self.state[key] = "done"
        self.ran.add(key)

    def fail(self, key: str) -> None:
        """Mark ``key`` failed and every stage that needs it, directly or not, blocked."""
        self.state[key] = "failed"
        stack = list(self.users.get(key, []))
        while stack:
            s = stack.pop()
            if self.state[s.key] in ("todo", "queued"):
                self.state[s.key] = "blocked"
                stack.extend(self.users.get(s.key, []))

    def counts(self) -> str:
        c = Counter(self.state.values())
        done = len(self.ran)
        text = f"{done}/{self.todo} done, {c['running']} running, {c['todo'] + c['queued']} pending"
        if c["failed"] or c["blocked"]:
            text += f", {c['failed']} failed, {c['blocked']} blocked"
        return text


class _Progress:
    """The driver's lines: printed when progress is on, logged otherwise."""

    def __init__(self, dag: _Dag, enabled: bool) -> None:
        self.dag, self.enabled = dag, enabled
        self.last = time.time()
        self.started: dict[str, float] = {}

    def say(self, text: str, counts: bool = True) -> None:
        self.last = time.time()
        line = f"{text}  [{self.dag.counts()}]" if counts else text
        if self.enabled:
            print(line, flush=True)
        else:
            log.info("%s", line)

    def start(self, s: Stage, where: str, device: str, attempt: int) -> None:
        self.started[s.key] = time.time()
        again = f", attempt {attempt}" if attempt > 1 else ""
        self.say(f"· {s.describe()} on {where}, {device}{again}")

    def finish(self, s: Stage, info: Mapping[str, Any] | None = None) -> None:
        took = time.time() - self.started.get(s.key, time.time())
        group = describe_workers(info or {})
        self.say(f"✓ {s.describe()} {took:.1f} s" + (f" on {group}" if group else ""))

    def failed(self, s: Stage, attempt: int, attempts: int, error: str, retry: bool) -> None:
        then = "; retrying" if retry else ("; not retried (a user error)" if attempt < attempts else "; giving up")
        self.say(f"✗ {s.describe()} attempt {attempt}/{attempts} failed: {error}{then}")

    def heartbeat(self) -> None:
        if time.time() - self.last < _HEARTBEAT_S:
            return
        running = [f"{s.describe()} {time.time() - self.started[s.key]:.0f} s" for s in self.dag.order
                   if self.dag.state[s.key] == "running" and s.key in self.started]
        self.say("… " + (", ".join(running) if running else "waiting for resources"))


# --------------------------------------------------------------------------- one attempt, anywhere


def attempts_log(cache: Path, stage: Stage) -> Path:
    """The log of a stage's attempts: beside its artifact, on the storage every node sees."""
    return artifact_dir(cache, stage).with_name(stage.key + ".log")


def _append(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_append(path, "the attempts log") as fh:  # never through a link planted in a shared cache
            fh.write(text)
    except (OSError, StorageError) as e:  # a log must never fail the stage (a planted link does: UnsafePathError)
        log.warning("cannot write the stage log %s: %s", path, e)


def _error_line(e: BaseException) -> str:
    lines = "".join(traceback.format_exception_only(type(e), e)).strip().splitlines()
    return lines[-1] if lines else type(e).__name__


def _device_name() -> str:
    try:
        return describe(stage_device())
    except LtrBenchError:
        return "no CUDA device (--device cuda)"


def attempt_stage(stage: Stage, cache: Path, attempt: int, where: Mapping[str, Any], progress: bool) -> dict[str, Any]:
    """One attempt at one stage in this process: ``{"ok": True, "info": …}`` or the error.

    Every attempt appends a header to the stage's log; a failure appends its traceback. The error
    returned is the exception's last line; ``retry`` is False for user errors, which another attempt
    would only repeat.
    """
    path = attempts_log(cache, stage)
    place = ", ".join(f"{k} {v}" for k, v in where.items()
                      if k in ("host", "node", "executor", "group_start", "worker_log") and v)
    _append(path, f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} attempt {attempt} of {stage.describe()} "
                  f"(key {stage.key}) on {place}, {_device_name()}\n")
    t0 = time.time()
    try:
        info = run_stage(stage, cache, progress, record={**where, "attempt": attempt})
    except Exception as e:  # noqa: BLE001 - every failure of a stage is reported, not raised
        _append(path, f"--- failed after {time.time() - t0:.1f} s\n{traceback.format_exc()}\n")
        log.warning("stage %s attempt %d failed: %s (log: %s)", stage.describe(), attempt, _error_line(e), path)
        return {"ok": False, "error": _error_line(e), "retry": not isinstance(e, LtrBenchError), "log": str(path)}
    _append(path, f"--- finished after {time.time() - t0:.1f} s\n")
    return {"ok": True, "info": info}


def _stage_device(stage: Stage, opts: ExecOptions, gpus_used: bool) -> str:
    """What ``LTRBENCH_DEVICE`` a stage gets: the CPU unless it reserved a GPU."""
    if opts.device == "cpu" or not gpus_used or STAGES.get(stage.kind).gpus_for(stage.config) <= 0:
        return "cpu"
    return opts.device


# --------------------------------------------------------------------------- inline


def _inline(dag: _Dag, cache: Path, opts: ExecOptions) -> dict[str, StageFailure]:
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but this machine has no CUDA device; pass --device auto or cpu.")
    check_inline(s for s in dag.order if dag.state[s.key] == "todo")
    gpus_used = opts.device != "cpu" and torch.cuda.is_available()
    progress = _Progress(dag, opts.progress)
    failures: dict[str, StageFailure] = {}
    attempts = opts.retries + 1
    where = {"host": socket.gethostname(), "executor": "inline"}
    for s in dag.order:
        if dag.state[s.key] != "todo":  # done, or blocked by a failed input
            continue
        env = {DEVICE_ENV: _stage_device(s, opts, gpus_used), "LTRBENCH_CACHE": str(Path(cache).absolute())}
        for attempt in range(1, attempts + 1):
            with _task_env(env, None, exclusive=False):
                dag.state[s.key] = "running"
                progress.start(s, where["host"], _device_name(), attempt)
                res = attempt_stage(s, cache, attempt, where, opts.progress)
            if res["ok"]:
                dag.finish(s.key)
                progress.finish(s)
                break
            dag.state[s.key] = "todo"
            retry = res["retry"] and attempt < attempts
            progress.failed(s, attempt, attempts, res["error"], retry)
            if not retry:
                failures[s.key] = StageFailure(s.kind, s.label, s.key, res["error"], res["log"], attempt,
                                               where["host"])
                dag.fail(s.key)
                break
    return failures


def check_inline(stages: Iterable[Stage]) -> None:
    """Refuse, before any stage runs, a data-parallel stage (``train.devices`` > 1) under the inline
    executor: only Ray starts the group of workers."""
    group = [(s, stage_devices(s)) for s in stages if stage_devices(s) > 1]
    if group:
        names = ", ".join(f"{s.describe()} (train.devices={n})" for s, n in group)
        raise ConfigError(f"{names} trains data-parallel, which needs Ray to start its workers: pass --executor ray "
                          "(an embedded Ray on this machine) or --ray-address HOST:PORT, or set train.devices=1. "
                          "Nothing was run.")


# --------------------------------------------------------------------------- Ray


def stage_resources(stage: Stage, *, gpus_used: bool, cpus_per_stage: int | None = None,
                    caps: Mapping[str, float] | None = None) -> dict[str, Any]:
    """What a stage's Ray task asks for: ``num_cpus``, ``num_gpus``, ``memory`` (bytes).

    CPUs: the stage's DataLoader workers + 1 (the training or encoding process itself; a kind that
    reads no images, ``StageKind.loader``, runs no loader workers), or ``cpus_per_stage``; memory: the
    stage kind's estimate + :data:`MEMORY_PER_LOADER_WORKER_GB` per loader worker; GPUs: the stage kind's share for its config, where GPUs are used. ``caps`` (the
    embedded cluster's one node) bounds CPUs and memory, so no task asks for more than the machine has.
    """
    kind = STAGES.get(stage.kind)
    workers = int((stage.env.get("image") or {}).get("num_workers", 0) or 0) if kind.uses_loader(stage.config) else 0
    cpus = float(cpus_per_stage or workers + 1)
    memory = (kind.memory_gb + MEMORY_PER_LOADER_WORKER_GB * workers) * 2**30
    if caps:
        cpus = min(cpus, max(caps.get("CPU", cpus), 1.0))
        memory = min(memory, caps.get("memory", memory))
    return {"num_cpus": cpus, "num_gpus": kind.gpus_for(stage.config) if gpus_used else 0.0, "memory": int(memory)}


def _ray_where() -> dict[str, Any]:
    """Where this Ray task runs: host, node id, and the worker's own log file on that node."""
    import ray  # here: runs in a Ray worker, which has ray imported anyway

    ctx = ray.get_runtime_context()
    where: dict[str, Any] = {"host": socket.gethostname(), "node": ctx.get_node_id(), "executor": "ray",
                             "resources": ctx.get_assigned_resources(),  # what the scheduler gave the task
                             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                             "code": str(Path(__file__).resolve().parent)}  # where this worker's ltrbench is
    try:  # a private API: the path is a help, never required
        logs = ray._private.worker.global_worker.node.get_logs_dir_path()
        where["worker_log"] = f"{logs}/worker-{ctx.get_worker_id()}-{ctx.get_job_id()}-{os.getpid()}.err"
    except Exception:  # noqa: BLE001
        pass
    return where


def _ray_stage_body(stage: Stage, cache: str, attempt: int, env: dict[str, str], threads: int, progress: bool,
                    gpu: bool):
    if not gpu:  # Ray 2.60 no longer hides GPUs from a task that reserved none: hide them here
        env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    with _task_env(env, threads, exclusive=True):
        where = _ray_where()
        yield {"event": "start", **where, "device": _device_name()}
        yield {"event": "result", **attempt_stage(stage, Path(cache), attempt, where, progress),
               "where": f"{where['host']} (node {where['node'][:8]})", "worker_log": where.get("worker_log")}


def _ray_cpu_stage(*args):
    """A Ray generator task for a stage that reserved no GPU (worker processes are reused)."""
    yield from _ray_stage_body(*args)


def _ray_group_stage(*args):
    """A Ray generator task that runs a data-parallel stage as a Ray Train group and waits for it
    (:func:`ltrbench.parallel.group_stage`; it reserves nothing: the group's workers do)."""
    yield from group_stage(*args)


class _GpuStage:
    """A stage that reserved a GPU runs in an actor of its own, ended once the stage has reported:
    a fresh process per GPU stage. (A generator task with Ray's ``max_calls=1`` would do the same,
    but Ray 2.60 ends such a worker before the driver has read its last item, and the driver waits
    forever.)"""

    def run(self, *args):
        yield from _ray_stage_body(*args)


def _ray(dag: _Dag, cache: Path, opts: ExecOptions, conn: Connection) -> dict[str, StageFailure]:
    progress = _Progress(dag, opts.progress)
    for note in conn.notes:  # where the stages run and what the nodes see (connect_for)
        progress.say(note, counts=False)
    gpus_used, caps = gpu_policy(conn, opts)
    _warn_unplaceable(conn, [s for s in dag.order if dag.state[s.key] == "todo"], opts, gpus_used, caps, progress)
    return _RayRun(dag, cache, opts, progress, gpus_used, caps).run()


def _ray_error(e: BaseException) -> str:
    """A Ray system error in one line: its name and its untabbed lines (the reason, not the ids)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("\t")]
    return f"{type(e).__name__}: {' '.join(lines)}"[:400]


class _RayRun:
    """The driver's loop: submit the stages whose inputs are done, read each task's start and result,
    retry or fail, until nothing is in flight."""

    def __init__(self, dag: _Dag, cache: Path, opts: ExecOptions, progress: _Progress, gpus_used: bool,
                 caps: Mapping[str, float] | None) -> None:
        import ray  # here, not at the top: importing ray takes about a second, which inline runs never need

        self.ray, self.dag, self.cache, self.opts, self.progress = ray, dag, cache, opts, progress
        self.gpus_used, self.caps = gpus_used, caps
        self.cpu_fn = ray.remote(_ray_cpu_stage)
        self.group_fn = ray.remote(_ray_group_stage)
        self.gpu_actor = ray.remote(_GpuStage)
        self.attempts: Counter[str] = Counter()
        self.inflight: dict[Any, Stage] = {}  # the task's generator → its stage
        self.actors: dict[Any, Any] = {}  # generator → the GPU stage's actor, ended when the stage has reported
        self.failures: dict[str, StageFailure] = {}

    def submit(self, s: Stage) -> None:
        self.attempts[s.key] += 1
        res = stage_resources(s, gpus_used=self.gpus_used, cpus_per_stage=self.opts.cpus_per_stage, caps=self.caps)
        n = stage_devices(s)
        if n > 1:  # a Ray Train group (ltrbench.parallel), launched by a task that only waits
            use_gpu = res["num_gpus"] > 0
            per_worker = {"num_cpus": res["num_cpus"], "memory": res["memory"]}
            if self.caps:  # the embedded cluster is one machine: its N workers share it
                per_worker = {"num_cpus": min(res["num_cpus"], max(1.0, float(self.caps.get("CPU", n) // n))),
                              "memory": int(min(res["memory"], self.caps.get("memory", res["memory"] * n) / n))}
            left = self.opts.retries - (self.attempts[s.key] - 1)
            gen = self.group_fn.options(num_cpus=0, max_retries=0, name=s.describe()).remote(
                s, str(self.cache), self.attempts[s.key], attempt_stage, forwarded_env(self.cache), per_worker,
                use_gpu, left)
            self.inflight[gen] = s
            self.dag.state[s.key] = "queued"
            return
        env = {**forwarded_env(self.cache), DEVICE_ENV: _stage_device(s, self.opts, self.gpus_used)}
        gpu = res["num_gpus"] > 0
        args = (s, str(self.cache), self.attempts[s.key], env, max(1, int(res["num_cpus"])), False, gpu)
        if gpu:
            task_env = {"env_vars": dict(GPU_TASK_ENV["env_vars"])}  # a copy: Ray may fill in what it gets
            actor = self.gpu_actor.options(**res, max_restarts=0, runtime_env=task_env).remote()
            gen = actor.run.options(name=s.describe()).remote(*args)
            self.actors[gen] = actor
        else:  # the job's workers, reused from stage to stage
            gen = self.cpu_fn.options(**res, max_retries=0, name=s.describe()).remote(*args)
        self.inflight[gen] = s
        self.dag.state[s.key] = "queued"

    def run(self) -> dict[str, StageFailure]:
        try:
            for s in self.dag.ready():
                self.submit(s)
            while self.inflight:
                ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=5.0)
                if not ready:
                    self.progress.heartbeat()
                for gen in ready:
                    self.read(gen)
        except KeyboardInterrupt:
            for gen in list(self.inflight):
                with contextlib.suppress(Exception):
                    if gen in self.actors:
                        self.ray.kill(self.actors[gen])
                    else:
                        self.ray.cancel(gen, force=True)
            raise
        return self.failures

    def read(self, gen: Any) -> None:
        """The next message of a task: its start (where, device), or its result."""
        s = self.inflight[gen]
        try:
            msg = self.ray.get(next(gen))
        except StopIteration:  # pragma: no cover - a task always yields its result before ending
            msg = {"event": "result", "ok": False, "error": "the task ended without a result", "retry": True}
        except self.ray.exceptions.RayError as e:  # the worker or its node died, or could not start
            msg = {"event": "result", "ok": False, "error": _ray_error(e), "retry": True}
        if msg["event"] == "start":
            self.dag.state[s.key] = "running"
            self.progress.start(s, f"{msg['host']} (node {msg['node'][:8]})", msg["device"], self.attempts[s.key])
            return
        self.inflight.pop(gen)
        self.actors.pop(gen, None)  # the last handle: Ray ends the actor's process (gracefully, its work done)
        if msg["ok"]:
            self.dag.finish(s.key)
            self.progress.finish(s, msg.get("info"))
            for n in self.dag.ready():
                self.submit(n)
            return
        attempts, most = self.attempts[s.key], self.opts.retries + 1
        retry = msg["retry"] and attempts < most
        self.progress.failed(s, attempts, most, msg["error"], retry)
        if retry:
            self.submit(s)
            return
        self.failures[s.key] = StageFailure(s.kind, s.label, s.key, msg["error"],
                                            msg.get("log") or str(attempts_log(self.cache, s)), attempts,
                                            msg.get("where", ""), msg.get("worker_log"))
        self.dag.fail(s.key)


def gpu_policy(conn: Connection, opts: ExecOptions) -> tuple[bool, dict[str, float] | None]:
    """Whether GPU stages ask for GPUs, and the caps of the embedded cluster's one node."""
    if conn.by_caller:  # a Ray the caller connected: ltrbench knows neither its machines nor an autoscaler
        return opts.device != "cpu" and conn.resources.get("GPU", 0) > 0, None
    if not conn.embedded:
        return opts.device != "cpu", None  # never decided from the totals now: an autoscaler adds nodes
    has_cuda = torch.cuda.is_available()  # the embedded cluster is this machine
    if opts.device == "cuda" and not has_cuda:
        raise ConfigError("--device cuda, but this machine has no CUDA device; pass --device auto or cpu.")
    return opts.device != "cpu" and has_cuda, {"CPU": conn.largest("CPU"), "memory": conn.largest("memory")}


def _warn_unplaceable(conn: Connection, todo: list[Stage], opts: ExecOptions, gpus_used: bool,
                      caps: Mapping[str, float] | None, progress: _Progress) -> None:
    """Say which asks no node of the cluster can meet now (they wait for an autoscaler, or forever)."""
    asks = [stage_resources(s, gpus_used=gpus_used, cpus_per_stage=opts.cpus_per_stage, caps=caps) for s in todo]
    gpu_stages = sum(a["num_gpus"] > 0 for a in asks)
    if gpu_stages and conn.resources.get("GPU", 0) == 0:
        progress.say(f"Ray: {gpu_stages} stages ask for GPUs and the cluster has none now; they wait until an "
                     f"autoscaler adds GPU nodes (pass --device cpu to run them on CPUs)", counts=False)
    for s, a in zip(todo, asks):
        n = stage_devices(s)
        kind = "GPU" if a["num_gpus"] > 0 else "CPU"
        per = 1.0 if kind == "GPU" or caps else a["num_cpus"]  # the embedded cluster shares its CPUs out
        have = conn.resources.get(kind, 0)
        if n > 1 and n * per > have and caps:  # this machine alone: it will never have them
            raise ConfigError(f"{s.describe()} trains on train.devices={n} workers of one {kind} each, and this "
                              f"machine has {have:g} {kind}s: lower train.devices to {int(have)} or less, or pass "
                              "--ray-address to run on a cluster. Nothing was run.")
        if n > 1 and n * per > have:
            progress.say(f"Ray: {s.describe()} trains on {n} workers of {per:g} {kind} each and the cluster has "
                         f"{conn.resources.get(kind, 0):g} {kind}s now; its placement group waits until the cluster "
                         f"has them (an autoscaler adds nodes), or lower train.devices", counts=False)
    cpus = max((a["num_cpus"] for a in asks), default=0)
    if cpus > conn.largest("CPU"):
        progress.say(f"Ray: a stage asks for {cpus:g} CPUs and the largest node has {conn.largest('CPU'):g}; such "
                     f"stages wait for a larger node (lower data.num_workers or pass --cpus-per-stage)", counts=False)
