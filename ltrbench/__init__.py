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

_API = ("ExecOptions", "Plan", "Request", "RunResult", "plan", "run")


def __getattr__(name: str):
    """The library API, imported on first use: ``import ltrbench`` stays light (no torch), so the
    CLI's ``--help`` and ``list`` answer at once."""
    if name in _API:
        from . import api  # torch: imported when the API is first used

        return getattr(api, name)
    raise AttributeError(f"module 'ltrbench' has no attribute {name!r}")


__all__ = ["ExecOptions", "Plan", "Request", "RunResult", "plan", "run", "__version__"]
