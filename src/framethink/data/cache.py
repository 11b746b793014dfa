"""A bounded in-memory cache of decoded clips, so that epochs after the first decode nothing."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

Value = TypeVar("Value")


class LRUCache(Generic[Value]):
    """Least-recently-used cache holding at most `capacity` entries (0 disables it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Hashable, Value] = OrderedDict()
        self.hits = self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Value]) -> Value:
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        value = compute()
        if self.capacity > 0:
            self._items[key] = value
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)
