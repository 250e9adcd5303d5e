"""Things chosen by name (models, datasets, stems, backends): one registry type and one "did you mean" helper.

A leaf module: it imports nothing of the package, so ``config.py`` and every layer may use it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def close_matches(word: object, options: Iterable[str], n: int = 1, cutoff: float = 0.5) -> list[str]:
    """The options nearest to ``word``: those equal to it but for case first, then difflib's closest."""
    options = [str(option) for option in options]
    same_but_case = [option for option in options if option.lower() == str(word).lower()]
    return (same_but_case or difflib.get_close_matches(str(word), options, n=n, cutoff=cutoff))[:n]


def did_you_mean(word: object, options: Iterable[str], n: int = 1, cutoff: float = 0.5) -> str:
    """``" (did you mean 'x'?)"`` (or ``'x' or 'y'`` for ``n > 1``), or ``""`` when nothing is close."""
    close = close_matches(word, options, n, cutoff)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


class Registry(Generic[T]):
    """Named entries of one kind. ``get`` refuses an unknown name with the nearest names and the known ones,
    raising ``error`` (``ValueError`` by default; the config layer passes ``ConfigError``)."""

    def __init__(self, kind: str, error: type[Exception] = ValueError, listing: str = "", suggestions: int = 1
                 ) -> None:
        self.kind = kind
        self.suggestions = suggestions
        self.error = error
        self.listing = listing  # where a user finds the full list, e.g. "`spikformer models` lists all"
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form: ``@registry.register("name")``."""

        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def get(self, name: str, where: str = "") -> T:
        if name not in self._entries:
            label = f"{where}={name!r}" if where else repr(name)
            known = self.listing or f"available: {', '.join(self.names())}"
            hint = did_you_mean(name, self._entries, n=self.suggestions)
            raise self.error(f"unknown {self.kind} {label}{hint}; {known}")
        return self._entries[name]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. for a test to register into)."""
        other: Registry[T] = Registry(self.kind, self.error, self.listing, self.suggestions)
        other._entries = dict(self._entries)
        return other

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)  # registration order: families stay together

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()

    def values(self):
        return self._entries.values()

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self.add(name, entry)

    def __delitem__(self, name: str) -> None:
        del self._entries[name]
