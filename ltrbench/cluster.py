"""Connecting to Ray: the embedded local cluster, or an external one at ``--ray-address``.

Part of the execution layer (with :mod:`ltrbench.execute`, :mod:`ltrbench.sweep` and
:mod:`ltrbench.parallel`, the only modules that import ray). What it owns:

* **Embedded** (no address): ``ray.init(address="local")``, always a fresh Ray on this machine.
  Ray's default would join a cluster that a ``ray start`` left running on this machine, with
  resources and a token that are not this run's.
* **External** (``--ray-address HOST:PORT``): a preflight that fails within seconds with one
  paragraph saying what to set: nothing listening at the address; a cluster with token
  authentication and no token here, or another token. Ray 2.60 turns token authentication on for
  any cluster started while ``~/.ray/auth_token`` exists (every embedded run creates that file), but
  a driver given an explicit address does not turn it on by itself and retries for about 30 s before
  failing. So unless the user set ``RAY_AUTH_MODE``, the preflight asks the cluster without a token
  and, when it asks for one, with this machine's (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
  ``~/.ray/auth_token``), and sets ``RAY_AUTH_MODE`` to what the cluster uses.
* **The runtime environment** of every task: the project's code (a source checkout as
  ``working_dir`` on an external cluster, on ``PYTHONPATH`` for the embedded one, where the files are
  this machine's; an installed package as ``py_modules``) unless ``ship_code=False``, and the
  variables ``LTRBENCH_*``, ``HF_*``, ``TORCH_HOME`` and ``TQDM_*`` (:func:`forwarded_env`).
* **The probe**: before any stage is submitted to an external cluster, a task on every node checks
  that the cache and the output folder are the driver's (visible and writable at the same path),
  and names the fix when they are not.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import ClusterError

log = logging.getLogger(__name__)

#: Environment variables a worker gets from the driver: by prefix, and by name.
FORWARD_PREFIXES = ("LTRBENCH_", "HF_", "TQDM_")
FORWARD_NAMES = ("TORCH_HOME",)
#: Tasks that reserved a GPU run in worker processes of their own (Ray pools workers by runtime
#: environment), never in one that a CPU stage used before (see ltrbench.execute on reuse). (The job's
#: environment cannot hide GPUs from the other tasks: Ray then finds no GPU to give a GPU task.)
GPU_TASK_ENV: dict[str, Any] = {"env_vars": {"LTRBENCH_WORKER_POOL": "gpu"}}
# results/: run outputs stay, the paper's numbers travel (the tables module reads them).
_WORKING_DIR_EXCLUDES = [".git", "**/__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "results/*",
                         "!results/paper_numbers.csv", "build", "dist"]
_PREFLIGHT_TIMEOUT_S = 2.0
#: The authentication mode the user chose (``RAY_AUTH_MODE`` before ltrbench or an embedded Ray set it).
_USER_AUTH_MODE = os.environ.get("RAY_AUTH_MODE")


@dataclass
class Connection:
    """The Ray cluster this process is connected to, as printed at start."""

    address: str | None  # None: the embedded local cluster
    auth: str  # token | disabled | unknown
    code: str  # how the project's code reaches the workers
    by_caller: bool = False  # Ray was connected before ltrbench was asked: used as it is
    nodes: list[dict[str, Any]] = field(default_factory=list)  # alive nodes: id, host, resources
    resources: dict[str, float] = field(default_factory=dict)  # the cluster's totals now
    notes: list[str] = field(default_factory=list)  # what the executor prints first (connect_for)

    @property
    def embedded(self) -> bool:
        return self.address is None

    def describe(self) -> str:
        where = ("the Ray this process was already connected to" if self.by_caller else
                 "embedded local cluster" if self.embedded else f"cluster at {self.address}")
        res = ", ".join(f"{k} {_amount(k, v)}" for k, v in sorted(self.resources.items())
                        if k in ("CPU", "GPU", "memory"))
        return (f"Ray: {where}, auth {self.auth}, {len(self.nodes)} node{'s' * (len(self.nodes) != 1)} "
                f"({res}); code: {self.code}")

    def largest(self, resource: str) -> float:
        """The most of ``resource`` any alive node has (what one task can get at most, now)."""
        return max((float(n["resources"].get(resource, 0.0)) for n in self.nodes), default=0.0)


_current: Connection | None = None


@contextlib.contextmanager
def task_env(env: Mapping[str, str], threads: int | None, exclusive: bool) -> Iterator[None]:
    """``env`` set in this process while a stage runs (and torch's threads), restored afterwards.

    ``exclusive``: also remove forwarded variables (``LTRBENCH_*`` …) that ``env`` lacks, so a reused
    Ray worker has exactly the driver's, never those of an earlier plan.
    """
    import torch  # here: cluster imports no more than it needs at import time (the address check)

    drop = [k for k in os.environ if exclusive and k not in env and (k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES)]
    saved = {k: os.environ.get(k) for k in [*env, *drop]}
    old_threads = torch.get_num_threads()
    try:
        for k in drop:
            del os.environ[k]
        os.environ.update(env)
        if threads:
            torch.set_num_threads(threads)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(old_threads)


def _amount(name: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB" if name == "memory" else f"{value:g}"


def forwarded_env(cache: Path) -> dict[str, str]:
    """The variables a worker gets from the driver; ``LTRBENCH_CACHE`` is always the driver's cache,
    as an absolute path, so no worker falls back to a cache of its own."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES}
    env["LTRBENCH_CACHE"] = str(Path(cache).expanduser().absolute())
    return env


def project_root() -> Path | None:
    """The source checkout this ltrbench runs from (None for an installed package)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "methods").is_dir() and (root / "ltrbench").is_dir() else None


def runtime_env(cache: Path, *, embedded: bool, ship_code: bool) -> tuple[dict[str, Any], str]:
    """The job's runtime environment and a description of how the code travels."""
    env: dict[str, Any] = {"env_vars": forwarded_env(cache)}
    if not ship_code:
        return env, "not shipped (--no-ship-code): the workers import their own installed ltrbench"
    root = project_root()
    if root is None:
        pkg = Path(__file__).resolve().parent
        env["py_modules"] = [str(pkg)]
        return env, f"py_modules {pkg}"
    if embedded:  # the same machine: the files are already here
        env["env_vars"]["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
        return env, f"PYTHONPATH={root}"
    excludes = list(_WORKING_DIR_EXCLUDES)
    for p in (Path(cache).expanduser().absolute(),):
        if p.is_relative_to(root):
            excludes.append(str(p.relative_to(root)))
    env["working_dir"] = str(root)
    env["excludes"] = excludes
    return env, f"working_dir {root} (without .git, caches and results)"


def connect(address: str | None, cache: Path, *, ship_code: bool = True) -> Connection:
    """Connect this process to Ray (once; again when another address is asked for)."""
    global _current
    import ray  # here, not at the top: importing ray takes about a second, which inline runs never need

    if ray.is_initialized():
        if _current is None or _current.by_caller:  # the caller connected Ray itself: use it as it is
            _current = Connection(address=address, auth=_auth_mode(), code="as the caller set it", by_caller=True)
            _refresh(_current)
            return _current
        if _current.address == address:
            _refresh(_current)
            return _current
        ray.shutdown()
    # Ray installs its own SIGTERM handler (exit 1, and a native stack dump on the way out); a handler
    # the CLI set (SIGTERM ends the run like Ctrl-C, exit 143) is put back once Ray is up.
    on_term = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if address is None:
        env, code = runtime_env(cache, embedded=True, ship_code=ship_code)
        env["worker_process_setup_hook"] = _quiet_placement_group_cleaner()
        ray.init(address="local", include_dashboard=False, log_to_driver=True, runtime_env=env)
    else:
        _preflight(address)
        env, code = runtime_env(cache, embedded=False, ship_code=ship_code)
        try:
            ray.init(address=address, log_to_driver=True, runtime_env=env)
        except (ConnectionError, RuntimeError) as e:
            raise ClusterError(f"Could not join the Ray cluster at {address}: {_last_line(e)}. Check the address "
                               f"(`ray status` on the head node prints it) and that this machine runs the cluster's "
                               f"Ray and Python versions.") from None
    if callable(on_term) and getattr(on_term, "ltrbench", False):
        signal.signal(signal.SIGTERM, on_term)
    _current = Connection(address=address, auth=_auth_mode(), code=code)
    _refresh(_current)
    return _current


def connect_for(address: str | None, cache: Path, *, ship_code: bool = True, out: Path | None = None) -> Connection:
    """The execute step's Ray, ready before any stage is submitted: :func:`connect`, then, on a
    cluster that is not this machine's embedded one (or one the caller connected), :func:`probe`
    from every node that the cache and ``out`` are shared. ``notes``: what was found, in lines the
    executor prints first."""
    conn = connect(address, cache, ship_code=ship_code)
    conn.notes = [conn.describe()]
    if not conn.embedded or conn.by_caller:
        reports = probe(conn, cache, out)
        where = sorted({r["ltrbench"] for r in reports})
        conn.notes.append(f"Ray: {len(reports)} node(s) see the cache{' and --out' if out else ''}; workers import "
                          f"ltrbench from {', '.join(where)}")
    return conn


def _quiet_placement_group_cleaner():
    """A worker setup hook for the embedded cluster, which runs without a dashboard: Ray Train's
    placement-group cleaner (a helper actor of every data-parallel stage, ltrbench.parallel) asks
    the State API, which needs the dashboard, every second whether the group's controller lives,
    and warns each time it cannot ("Failed to query Ray Train Controller actor state"), for as long
    as the stage trains. On one machine that backup is moot (the controller removes its placement
    group itself; a dead driver takes the whole embedded Ray with it), so its warnings are silenced.
    A nested function: Ray pickles it by value, so no worker imports ltrbench to run it."""

    def hook() -> None:
        logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)

    return hook


def _refresh(conn: Connection) -> None:
    import ray  # here, not at the top: see connect()

    conn.nodes = [{"id": n["NodeID"], "host": n.get("NodeManagerHostname", "?"), "resources": n.get("Resources", {})}
                  for n in ray.nodes() if n.get("Alive")]
    conn.resources = dict(ray.cluster_resources())


def _auth_mode() -> str:
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled  # here: see connect()
    except ImportError:  # a Ray without token authentication
        return "unknown"
    return "token" if is_token_auth_enabled() else "disabled"


def _last_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def _split_address(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|")
_ADDRESS_FORMS = ("HOST:PORT (the GCS address `ray start --head` printed, e.g. 10.0.0.5:6379), auto (the cluster "
                  "this machine joined with `ray start`), or ray://HOST:PORT (Ray Client)")


def check_address(address: str) -> None:
    """Fail with one paragraph unless ``address`` is a Ray address ltrbench can use: ``auto``,
    ``ray://HOST:PORT`` or ``HOST:PORT`` with a port in 1..65535, and, for ``HOST:PORT``, something
    listens there (checked within seconds; what it is, the preflight of :func:`connect` asks)."""
    from .errors import clip  # here: cluster imports no more than it needs at import time

    text = address.strip()
    if text == "auto":
        return
    body = text[len("ray://"):] if text.startswith("ray://") else text
    host, sep, port = body.rpartition(":")
    if not sep or not port.isdigit() or not _HOST.fullmatch(host) or "://" in body:
        raise ClusterError(f"--ray-address {clip(address)!r} is not a Ray address; pass {_ADDRESS_FORMS}.")
    if not 1 <= int(port) <= 65535:
        raise ClusterError(f"--ray-address {clip(address)!r}: port {clip(port)} is outside 1..65535; pass "
                           f"{_ADDRESS_FORMS}.")
    if text.startswith("ray://"):
        return
    hp = (host.strip("[]") or "127.0.0.1", int(port))
    try:
        socket.create_connection(hp, timeout=_PREFLIGHT_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterError(
            f"Cannot reach a Ray cluster at {address} ({e.strerror or type(e).__name__}). Start one on the head "
            f"machine with `ray start --head --port {hp[1]}` (add `--num-gpus N` for GPUs), or pass the address "
            f"that `ray start --head` printed (the GCS port, 6379 by default; not the dashboard's 8265 or the "
            f"client's 10001) as --ray-address HOST:PORT, and check that no firewall blocks it.") from None


def _token_here() -> bool:
    """Whether this machine has a Ray token where Ray looks (read here: asking Ray's own loader
    caches the token, which a driver joining a cluster without authentication must not send)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    try:
        return bool(Path(path).expanduser().read_text().strip())
    except OSError:
        return False


def _preflight(address: str) -> None:
    """Fail within seconds, with what to set, where ``ray.init`` would retry for half a minute; set
    this driver's authentication mode to the cluster's."""
    check_address(address)  # the format, the port, something listening (again: time has passed since planning)
    hp = _split_address(address)
    if hp is None:  # "auto", a ray:// client address: Ray resolves those itself
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config, GcsClient  # here: see connect()
        from ray.exceptions import AuthenticationError  # here: see connect()
    except ImportError:  # a Ray without token authentication: nothing more to check
        return

    def ask() -> BaseException | None:
        """The cluster's answer to a key-value read (None: it answered), within the preflight's time."""
        answer: dict[str, BaseException | None] = {}

        def read() -> None:
            try:
                GcsClient(address=f"{hp[0]}:{hp[1]}").internal_kv_get(b"session_name", b"session", timeout=2)
                answer["error"] = None
            except BaseException as e:  # noqa: BLE001 - returned to the caller
                answer["error"] = e

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(_PREFLIGHT_TIMEOUT_S + 1.0)
        return answer.get("error", TimeoutError())

    def use(mode: str) -> None:
        os.environ["RAY_AUTH_MODE"] = mode  # and refresh Ray's cached config, as `ray start` does
        Config.initialize("")
        # A token Ray loaded before (an embedded cluster in this process) would still be sent, and a
        # cluster without authentication then refuses this driver's replies: forget it.
        AuthenticationTokenLoader.instance().reset_cache()

    has_token = _token_here()
    if _USER_AUTH_MODE is None:
        # The driver's mode must be the cluster's (a driver in token mode joined to a cluster without
        # authentication loses its actors: their owner's replies are refused). Ask without a token
        # first, then with this machine's.
        use("disabled")
        err = ask()
        if isinstance(err, AuthenticationError) and has_token:
            use("token")
            err = ask()
    else:
        err = ask()
    if isinstance(err, TimeoutError):
        raise ClusterError(
            f"Something listens at {address} but does not answer as a Ray cluster within "
            f"{_PREFLIGHT_TIMEOUT_S + 1:.0f} s. Pass the GCS address that `ray start --head` printed (port 6379 by "
            f"default; not the dashboard's 8265 or the client's 10001) as --ray-address HOST:PORT.")
    if isinstance(err, AuthenticationError):
        if _USER_AUTH_MODE is not None and _USER_AUTH_MODE.lower() != "token":
            fix = (f"RAY_AUTH_MODE={_USER_AUTH_MODE} is set here: unset it (ltrbench then uses this machine's token "
                   f"when the cluster asks for one) or set RAY_AUTH_MODE=token, with the cluster's token available")
        elif has_token:
            fix = ("this machine's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is not the "
                   "cluster's: copy the head node's token (`ray get-auth-token` there prints it) into "
                   "~/.ray/auth_token here, or set RAY_AUTH_TOKEN=<token>")
        else:
            fix = ("this machine has no token: copy the head node's token (`ray get-auth-token` there prints it) "
                   "into ~/.ray/auth_token here, or set RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file>); "
                   "ltrbench then sets RAY_AUTH_MODE=token itself")
        raise ClusterError(f"The Ray cluster at {address} uses token authentication and refused this driver: "
                           f"{fix}. To run without a cluster, leave out --ray-address.")
    if err is not None:
        log.info("Ray preflight at %s: %s (left to ray.init)", address, _last_line(err))


# --------------------------------------------------------------------------- the probe


def check_shared(paths: dict[str, str], token: str) -> dict[str, str]:
    """Why each of ``paths`` is not the driver's folder here (its marker missing or another one's, or
    the folder not writable), by name; empty when all are fine."""
    problems = {}
    for name, folder in paths.items():
        marker = Path(folder) / f".ltrbench-probe-{token}"
        try:
            if marker.read_text() != token:
                problems[name] = f"{marker} holds another run's marker"
                continue
        except OSError as e:
            problems[name] = f"the driver's marker {marker} is not visible here ({e.strerror or e})"
            continue
        try:
            mine = Path(folder) / f".ltrbench-probe-{token}-{socket.gethostname()}-{os.getpid()}"
            mine.write_text("ok")
            mine.unlink()
        except OSError as e:
            problems[name] = f"{folder} is visible but not writable here ({e.strerror or e})"
    return problems


def _probe_task(paths: dict[str, str], token: str) -> dict[str, Any]:
    """On one node: :func:`check_shared`, and where this worker imported ltrbench from."""
    import ray  # here: runs in a worker, which has ray imported anyway

    return {"host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
            "problems": check_shared(paths, token), "ltrbench": str(Path(__file__).resolve().parent)}


def probe(conn: Connection, cache: Path, out: Path | None, timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Check from a worker on every alive node that the cache and ``out`` are shared and writable."""
    import ray  # here, not at the top: see connect()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # here: see connect()

    token = uuid.uuid4().hex
    paths = {"LTRBENCH_CACHE": Path(cache).expanduser().absolute()}
    if out is not None:
        paths["--out"] = Path(out).expanduser().absolute()
    markers = []
    try:
        for folder in paths.values():
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f".ltrbench-probe-{token}"
            marker.write_text(token)
            markers.append(marker)
        task = ray.remote(_probe_task)
        refs = [task.options(num_cpus=0, max_retries=0,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(n["id"], soft=False))
                .remote({k: str(v) for k, v in paths.items()}, token) for n in conn.nodes]
        try:
            reports = ray.get(refs, timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterError(f"No worker answered the storage probe within {timeout_s:.0f} s on the {len(refs)} "
                               f"nodes of {conn.address}: check `ray status` and the worker logs on the nodes "
                               f"(shipping the code or starting Python may fail there).") from None
    finally:
        for m in markers:
            m.unlink(missing_ok=True)
    bad = [(r, name, why) for r in reports for name, why in r["problems"].items()]
    if bad:
        lines = "; ".join(f"{name} on node {r['host']} ({r['node'][:8]}): {why}" for r, name, why in bad)
        raise ClusterError(
            f"The cluster's workers do not share this driver's folders: {lines}. Every node must see the cache and "
            f"the results at the same path: put them on shared storage (NFS, Lustre, …) mounted at the same path on "
            f"every node, then `export LTRBENCH_CACHE=/shared/ltrbench-cache` and pass --out /shared/results; or "
            f"leave out --ray-address to run on this machine alone.")
    return reports
