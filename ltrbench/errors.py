"""The one exception type the CLI turns into a one-paragraph message and a non-zero exit.

Library code raises :class:`LtrBenchError` (or a subclass) for anything a user can fix: a bad
name, a bad config value, a missing file. The message must say what was wrong, where (file and
line, config key, class) and what to do. Programming errors stay ordinary exceptions.
"""
from __future__ import annotations

from typing import Any

#: The most characters of a value a message quotes (a value is never printed longer than a line).
CLIP = 80


def clip(value: Any, n: int = CLIP) -> str:
    """``value`` as text of at most ``n`` characters, on one line (its middle cut, its length said)."""
    text = " ".join(str(value).split()) if not isinstance(value, str) else value.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) <= n:
        return text
    keep = max(n - 24, 8)
    return f"{text[:keep]}… ({len(text):,} characters)"


class LtrBenchError(Exception):
    """A user-facing error: the message is shown as is, the process exits with status 2."""


class ConfigError(LtrBenchError):
    """A config file or a ``--set`` override is wrong."""


class DataError(LtrBenchError):
    """A data root, a split list, an image or a corpus file is wrong or missing."""


class RegistryError(LtrBenchError):
    """A registry was asked for an unknown name, or a name was registered twice."""


class PluginError(LtrBenchError):
    """A plugin file under methods/ or datasets/ failed to load."""


class CacheError(LtrBenchError):
    """A cached artifact is not (or no longer) a verified, loadable artifact of ltrbench."""


class ClusterError(LtrBenchError):
    """A Ray cluster cannot be reached or used (address, token authentication, shared storage)."""


class RunFailedError(LtrBenchError):
    """Some runs failed (a stage kept failing after its retries); the others completed.

    ``result`` is the :class:`ltrbench.api.RunResult` that :func:`ltrbench.run` would have returned
    (``result.frame``: the successful runs' rows; ``result.failures``: each failed run's method,
    seed, stage, key, error, log). The message is the summary the CLI prints.
    """

    def __init__(self, message: str, result=None) -> None:
        super().__init__(message)
        self.result = result

    @property
    def frame(self):
        """The completed runs' rows (``result.frame``)."""
        return None if self.result is None else self.result.frame

    @property
    def failures(self) -> list:
        return [] if self.result is None else list(self.result.failures)
