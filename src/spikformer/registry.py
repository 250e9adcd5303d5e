"""Things chosen by name (models, datasets, stems, backends): one registry type and one "did you mean" helper.

A leaf module: it imports nothing of the package, so ``config.py`` and every layer may use it.
"""

from __future__ import annotations

import difflib
import importlib
import re
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


_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")


def is_import_path(name: object) -> bool:
    """Whether ``name`` reads as ``package.module:attribute`` or ``package.module.attribute``."""
    return isinstance(name, str) and ("." in name or ":" in name) and bool(_IMPORT_PATH.fullmatch(name))


def import_object(path: str) -> object:
    """The object an import path names: ``"mypkg.neurons:MyNeuron"`` or ``"mypkg.neurons.MyNeuron"`` (the module
    is everything before the colon, or before the last dot). Raises ``ImportError`` or ``AttributeError``."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


class Registry(Generic[T]):
    """Named entries of one kind. ``get`` refuses an unknown name with the nearest names and the known ones,
    raising ``error`` (``ValueError`` by default; the config layer passes ``ConfigError``).

    An ``importable`` registry also takes an import path (``mypkg.mod:Name`` or ``mypkg.mod.Name``) for an entry
    that lives outside the package, so that a config can name it without the package being edited; the entry
    is imported, not registered."""

    def __init__(self, kind: str, error: type[Exception] = ValueError, listing: str = "", suggestions: int = 1,
                 importable: bool = False) -> None:
        self.kind = kind
        self.importable = importable
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
            if self.importable and is_import_path(name):
                return self._imported(name, label)
            known = self.listing or f"available: {', '.join(self.names())}"
            hint = did_you_mean(name, self._entries, n=self.suggestions)
            raise self.error(f"unknown {self.kind} {label}{hint}; {known}")
        return self._entries[name]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. for a test to register into)."""
        other: Registry[T] = Registry(self.kind, self.error, self.listing, self.suggestions, self.importable)
        other._entries = dict(self._entries)
        return other

    def _imported(self, path: str, label: str) -> T:
        try:
            entry = import_object(path)
        except ImportError as error:
            raise self.error(f"{self.kind} {label} cannot be imported: {error}; the module must be installed or on "
                             f"PYTHONPATH (or use a registered name: {', '.join(self.names())})") from None
        except AttributeError as error:
            raise self.error(f"{self.kind} {label} cannot be imported: {error}") from None
        if not callable(entry):
            raise self.error(f"{self.kind} {label} is a {type(entry).__name__}, not a class or function")
        return entry  # type: ignore[return-value]

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
