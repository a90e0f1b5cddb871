"""The names the command line and the library share: metrics, shot conventions, interval modes,
``diff --strict`` rules and the diff tolerance.

This module imports nothing (not numpy, not torch): the CLI builds its parser from it, so that
``run_bench.py --help`` answers at once. :mod:`ltrbench.metrics` and :mod:`ltrbench.tables` re-export
these names; define a new one here, where both sides see it.
"""
from __future__ import annotations

#: Shot conventions, ``name: (many threshold, few threshold, inclusive)``.
CONVENTIONS: dict[str, tuple[int, int, bool]] = {
    "paper": (100, 20, True),
    "decoupling": (100, 20, False),
}
#: How each convention is written in tables and reports.
CONVENTION_NOTE = {
    "paper": "paper convention: many ≥ 100, few ≤ 20 training images",
    "decoupling": "decoupling convention: many > 100, few < 20 training images",
}
#: Every metric a result records (see :mod:`ltrbench.metrics` for their definitions).
METRIC_NAMES = ("overall", "many", "medium", "few", "mean_class", "harmonic", "geometric", "worst", "macro_f1",
                "nll", "ece", "ece_many", "ece_medium", "ece_few")
#: What tables show beside mean ± std (see :data:`ltrbench.tables.CI_NOTE`).
CI_MODES = ("none", "seeds", "bootstrap")
#: How ``diff --strict`` judges a number (see :meth:`ltrbench.tables.DiffReport.failing`).
STRICT_RULES = ("tolerance", "interval", "either", "both")
#: Points ours may differ from the paper's before tables mark it and ``diff --strict`` fails.
TOLERANCE = 1.0
