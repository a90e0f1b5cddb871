"""ltrbench: a benchmark harness for long-tailed recognition on CLIP backbones.

The library API is :func:`run` (plan, execute and collect a tidy DataFrame of results) and
:func:`plan` (the de-duplicated stage DAG, without running it). The core (this package) names no
particular method or data set; those are plugins in the top-level ``methods/`` and ``datasets/``
folders, loaded as ``ltrbench.methods.<name>`` and ``ltrbench.datasets.<name>`` by
:func:`ltrbench.plugins.load_all`.
"""
from .version import __version__
from . import plugins

plugins.install()  # the packages ltrbench.methods / ltrbench.datasets (no plugin is loaded yet)

from .api import ExecOptions, Plan, Request, RunResult, plan, run  # noqa: E402  (after install: the API may import plugin code)

__all__ = ["ExecOptions", "Plan", "Request", "RunResult", "plan", "run", "__version__"]
