"""The one registry pattern: models, datasets, optimizers, schedules, policies, export formats, report pages and
doctor checks are looked up by name."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


def suggest(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """A ' Did you mean ...?' hint for a misspelt name, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _same_definition(old: Any, new: Any) -> bool:
    """The same function defined again (a notebook cell run twice, a file imported again), not another one."""
    return (getattr(old, "__module__", None), getattr(old, "__qualname__", None)) == (
        getattr(new, "__module__", None), getattr(new, "__qualname__", None))


class Registry(Generic[T]):
    """Maps names to builder functions; registering a name twice is an error."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._info: dict[str, Any] = {}

    def register(self, fn: T | None = None, *, name: str | None = None, info: Any = None) -> Any:
        """Decorator: the builder's own name is its registry name unless `name` is given; `info` is what is known
        about the entry without calling it (a dataset's size and normalisation constants, say). Registering the
        same function again replaces it (a re-run notebook cell); another function under a taken name is an error."""

        def add(f: T) -> T:
            key = name or f.__name__
            if key in self._entries and not _same_definition(self._entries[key], f):
                raise KeyError(f"{self.kind} {key!r} is already registered (by {self._entries[key].__module__})")
            self._entries[key] = f
            if info is not None:
                self._info[key] = info
            return f

        return add(fn) if fn is not None else add

    def info(self, name: str) -> Any:
        """What the entry was registered with (None when nothing was given)."""
        return self._info.get(name)

    def get(self, name: str) -> T:
        """The builder for `name`, or a KeyError that lists the nearest names."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}.{suggest(name, self.names())} "
                f"Known {self.kind}s: {', '.join(self.names())}"
            ) from None

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, optionally filtered by a shell-style pattern such as 'resnet*'."""
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def in_order(self) -> list[str]:
        """Names in the order they were registered (for registries where the order means something)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
