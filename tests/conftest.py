"""Shared fixtures: a private cache per test session and the tiny built-in world's overrides."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import subprocess
import sys
import contextlib
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_WORKERS = 4  # `-n auto` (pyproject addopts): one pytest-xdist worker per core, at most this many
#: The marker of the tests that start Ray (``@pytest.mark.ray``): one worker runs them all, one after
#: the other (two Ray clusters at once on a small machine slow both far more than running them in turn).
RAY_MARK = "ray"


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the worker's group
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.get_closest_marker(RAY_MARK):
            item.add_marker(pytest.mark.xdist_group("ray"))


def _share_the_cores() -> None:
    """Each xdist worker's torch (and the CLI runs it starts) gets its share of the cores, set before
    torch is imported, so that the workers' threads do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        share = str(max(1, (os.cpu_count() or 1) // workers))
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, share)


_share_the_cores()


def _real_splits() -> Path:
    """The published split lists of tests/data/splits/*.txt.gz as plain files, written once into a
    temporary folder named by their content (shared by the test processes of one machine)."""
    gz = sorted((REPO / "tests" / "data" / "splits").glob("*.txt.gz"))
    tag = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in gz)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"ltrbench-test-splits-{tag}"
    for p in gz:
        dest = folder / p.name[: -len(".gz")]
        if not dest.is_file():
            folder.mkdir(exist_ok=True)
            tmp = dest.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(gzip.decompress(p.read_bytes()))
            os.replace(tmp, dest)  # atomic: parallel test workers never read half a list
    return folder


SPLITS = _real_splits()
os.environ.setdefault("LTRBENCH_SPLITS", str(SPLITS))  # bench/genroot.py's published lists, in subprocesses too

#: A built-in world small enough for end-to-end tests (seconds, not minutes).
TINY = [
    "world.num_classes=12", "world.max_count=120", "world.min_count=3", "world.val_per_class=3",
    "world.test_per_class=4", "world.num_captions=256", "miniclip.epochs=1", "miniclip.batch_size=64",
    "baseline.train.epochs=1", "baseline.train.batch_size=64",
]


#: A test session started by a test reuses its parent session's cache (read by ``_private_cache``).
PARENT_CACHE = "LTRBENCH_TEST_CACHE"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Every test session gets its own LTRBENCH_CACHE, so tests never touch the user's cache; a test
    session started by a test (tests/test_readme.py) may be given its parent's in ``LTRBENCH_TEST_CACHE``."""
    old = os.environ.get("LTRBENCH_CACHE")
    os.environ["LTRBENCH_CACHE"] = os.environ.get(PARENT_CACHE) or str(tmp_path_factory.mktemp("ltrbench-cache"))
    yield
    if old is None:
        os.environ.pop("LTRBENCH_CACHE", None)
    else:
        os.environ["LTRBENCH_CACHE"] = old


@pytest.fixture(autouse=True)
def _library_logger_restored():
    """The CLI run in-process (``main([... "--debug"])``) sets the library logger's level; put it back
    so that no test sees another's logging state."""
    lib = logging.getLogger("ltrbench")
    level, propagate, handlers = lib.level, lib.propagate, list(lib.handlers)
    yield
    lib.setLevel(level)
    lib.propagate = propagate
    lib.handlers[:] = handlers


def tiny_set(extra: list[str] = ()) -> list[str]:
    out = []
    for item in [*TINY, *extra]:
        out += ["--set", item]
    return out


def run_cli(*args: str, cwd: Path = REPO, env: dict | None = None, process: bool = False):
    """Run the CLI (``python run_bench.py ARGS``) and return its exit status, stdout and stderr.

    By default in this process: ``ltrbench.cli.main(ARGS)`` with ``env`` set, ``cwd`` as the working
    folder and stdout/stderr captured, then everything a process boundary would reset put back (the
    environment, the folder, the logging handler, a Ray connection the run made). That saves the 5-6 s
    of importing torch and open_clip a fresh interpreter pays. A Ray connection this process held
    before the run (a test's ``execute`` on a cluster) is the run's, as ``ltrbench.cli`` reuses one
    (``ltrbench.cluster.connect``): its workers are warm. ``process=True`` runs a real
    ``python run_bench.py`` instead: for what only a process shows (signals, imports, the script, a
    cold connection)."""
    if process:
        e = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, str(REPO / "run_bench.py"), *args], cwd=cwd, env=e,
                              capture_output=True, text=True, timeout=900)
    return _run_cli_here(list(args), cwd, env or {})


def _run_cli_here(argv: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    import io
    import traceback

    from ltrbench import cli

    ray = sys.modules.get("ray")
    ray_before = bool(ray and ray.is_initialized())
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    # main()'s logging.basicConfig does nothing under pytest (its handlers sit on the root logger):
    # the handler a fresh process gets, writing to the captured stderr
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:  # argparse's errors and --help
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
            except Exception:  # what the interpreter would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        root.removeHandler(handler)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and not ray_before:  # the process would have ended
            ray.shutdown()  # (ltrbench.cluster.connect starts afresh whenever Ray is down)
    return subprocess.CompletedProcess(["run_bench.py", *argv], code, out.getvalue(), err.getvalue())


class _Evil:
    """Unpickling this calls ``open(marker, "w")``: a file appears if a pickle ever runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil_pickle(path: Path, marker: Path, wrap: str | None = None) -> Path:
    """A torch checkpoint whose unpickling would create ``marker`` (what an attacker plants); with
    ``wrap`` the payload sits under that key of a dict, as in a state dict or a resume checkpoint."""
    import torch

    payload = _Evil(marker)
    torch.save({wrap: payload} if wrap else payload, path)
    return path


class ToyTask:
    """A :class:`ltrbench.train.TrainTask` over ``module`` on ``(x, y)`` batches with cross-entropy;
    ``validate()`` gives ``score`` (None: the recipe does not validate)."""

    def __init__(self, module, score=None):
        self.module, self.score = module, score

    def param_groups(self):
        return [{"params": list(self.module.named_parameters())}]

    def set_mode(self):
        self.module.train()

    def loss(self, batch):
        import torch.nn.functional as F  # torch only where a test trains

        x, y = batch
        return F.cross_entropy(self.module(x), y)

    def validate(self):
        return self.score


@contextlib.contextmanager
def token_cluster(head: dict, node: dict, nodes: int = 2, env: dict | None = None):
    """A local multi-node Ray cluster (``ray.cluster_utils.Cluster``) with token authentication on:
    a head with ``head``'s resources and ``nodes`` nodes with ``node``'s, ``env`` set while it runs.
    Yields ``(cluster, ids of the added nodes)``; the driver finds the token requirement itself."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "token")  # the cluster's processes start with token authentication
        mp.setenv("RAY_AUTH_TOKEN", uuid.uuid4().hex)
        for k, v in (env or {}).items():
            mp.setenv(k, v)
        Config.initialize("")  # (Ray reads the mode into this process's config)
        AuthenticationTokenLoader.instance().reset_cache()  # an embedded Ray earlier loaded this machine's token
        c = Cluster(initialize_head=True, head_node_args=head)
        try:
            added = [c.add_node(**node) for _ in range(nodes)]
            c.wait_for_nodes()
            mp.delenv("RAY_AUTH_MODE")  # the driver finds out itself that the cluster wants a token
            Config.initialize("")
            yield c, {n.node_id for n in added}
        finally:
            ray.shutdown()
            c.shutdown()
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
