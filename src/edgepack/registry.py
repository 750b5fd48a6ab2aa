"""One small registry class for architectures, export targets and parity runners."""

from __future__ import annotations

from typing import Generic, TypeVar
from collections.abc import Callable, Iterator

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to entries. ``get`` raises with the list of known names; it never returns None."""

    def __init__(self, kind: str, error: type[Exception] = KeyError):
        self.kind = kind
        self._error = error
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            self.add(name, entry, *aliases)
            return entry

        return decorator

    def add(self, name: str, entry: T, *aliases: str) -> None:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name

    def canonical(self, name: str) -> str:
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise self._error(f"Unknown {self.kind} {name!r}. Supported: {', '.join(self.names())}.")

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._aliases

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._entries.items())
