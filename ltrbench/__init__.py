"""ltrbench: a benchmark harness for long-tailed recognition on CLIP backbones.

The core (this package) names no particular method or data set; those are plugins in the
top-level ``methods/`` and ``datasets/`` folders, loaded by :func:`ltrbench.plugins.load_all`.
"""
__version__ = "0.1.0"
