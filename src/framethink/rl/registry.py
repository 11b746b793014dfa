"""A name -> plug-in mapping for the RL algorithms (advantage estimators, policy losses)."""
from __future__ import annotations

from typing import Generic, TypeVar

from framethink.errors import ConfigError

T = TypeVar("T")


class Registry(dict[str, T], Generic[T]):
    """Plug-ins of one kind by name; looking up an unknown name is a ConfigError listing the known ones."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def lookup(self, name: str) -> T:
        if name not in self:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {sorted(self)}")
        return self[name]
