"""A tiny name → object registry used for ops, quantizers, genotypes, strategies, networks."""
from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from bitnas.errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, known: list[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """Names map to objects; lookups of unknown names fail with the list of known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T] | T:
        """Register `obj` under `name`; used bare as a decorator when `obj` is None."""

        def add(o: T) -> T:
            if name in self._items or name in self._aliases:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = o
            for a in aliases:
                self._aliases[a] = name
            return o

        return add if obj is None else add(obj)

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        known = self.names()
        raise ConfigError(
            f"unknown {self.kind} '{name}'{did_you_mean(name, known + list(self._aliases))}; "
            f"known: {', '.join(known)}"
        )

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
