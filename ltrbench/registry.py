"""One small name → object registry, and the harness's registries.

A duplicate name raises at registration (two plugins claiming one name is always a bug; adding
the very same object again is a no-op); an unknown name raises with the known names and a "did
you mean" suggestion (difflib).
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from . import plugins
from .errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (classes, functions). ``kind`` names the registry in errors.

    ``loader`` is called before any lookup (once it has run, it returns at once): the harness's
    registries load the plugin folders on first use, so nobody has to remember to.

    ``indexed`` names the registry in :func:`ltrbench.plugins.index` (the names plugin files register,
    read without importing them): :meth:`known` and :meth:`summaries` answer from it while the
    plugins are not loaded, so the CLI's ``--help``, ``list`` and name errors import no torch.
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None, indexed: str | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._loader = loader
        self._indexed = indexed

    def _index(self) -> dict | None:
        """The index's entries of this registry, or None when there is none or it is incomplete."""
        if self._indexed is None or plugins.loaded():
            return None
        ix = plugins.index()
        return dict(ix.entries[self._indexed]) if ix.complete(self._indexed) else None

    def known(self, name: str) -> bool:
        """Whether ``name`` is registered, importing no plugin when the index can tell."""
        if name in self._items:
            return True
        entries = self._index()
        return name in entries if entries is not None else name in self

    def summaries(self) -> dict[str, dict]:
        """``name → info`` of every name, sorted: from the index while the plugins are not loaded
        (a method's ``description`` and ``default_run``, a backbone's ``spec``), else from the
        registered objects."""
        entries = self._index()
        if entries is None:
            self._load()
            return {n: _summary(self._items[n]) for n in sorted(self._items)}
        out = {n: dict(e.info) for n, e in entries.items()}
        out.update({n: _summary(o) for n, o in self._items.items()})
        return dict(sorted(out.items()))

    def check(self, name: str) -> None:
        """Raise :class:`RegistryError` (the known names, a "did you mean") unless ``name`` is :meth:`known`."""
        if not self.known(name):
            raise RegistryError(self.unknown_message(name))

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@METHODS.register("crt")`` above a class or function."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}.")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: first by {_where(self._items[name])}, "
                f"again by {_where(obj)}. Rename one of them."
            )
        self._items[name] = obj

    def get(self, name: str) -> T:
        if name not in self._items:
            self._load()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        entries = self._index()
        known = sorted(set(self._items) | set(entries or ()))
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}."

    def names(self) -> list[str]:
        """Every registered name, sorted (from the index while the plugins are not loaded)."""
        entries = self._index()
        if entries is not None:
            return sorted(set(entries) | set(self._items))
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._items)


def _summary(obj: object) -> dict:
    """What :meth:`Registry.summaries` shows of a registered object (as the index reads it)."""
    if hasattr(obj, "image_size") and hasattr(obj, "embed_dim"):
        return {"spec": obj}
    desc, default = getattr(obj, "description", None), getattr(obj, "default_run", None)
    return {**({"description": desc} if isinstance(desc, str) else {}),
            **({"default_run": default} if isinstance(default, bool) else {})}


def _where(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{mod}.{qual}"


METHODS: Registry = Registry("method", plugins.load_all, "METHODS")
DATASETS: Registry = Registry("dataset", plugins.load_all, "DATASETS")
BACKBONES: Registry = Registry("backbone", plugins.load_all, "BACKBONES")
STAGES: Registry = Registry("stage kind", plugins.load_all)
#: Config sections (frozen dataclasses), registered by the code that owns them (ltrbench.config).
SECTIONS: Registry = Registry("config section", plugins.load_all)
#: Classification losses by name, ``make(train_counts, **params) -> loss(logits, targets)`` (finetune).
LOSSES: Registry = Registry("loss", plugins.load_all)
#: Generated starting weights by ``backbone.pretrained`` tag (e.g. the built-in world's mini-CLIP).
WEIGHTS: Registry = Registry("weights source", plugins.load_all, "WEIGHTS")
