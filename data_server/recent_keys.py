"""A bounded, thread-safe memory of recently seen keys: what a process need not find out again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable


class RecentKeys:
    """The last ``capacity`` keys added, for a membership test."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, key: Hashable) -> None:
        with self._lock:
            self._keys[key] = None
            self._keys.move_to_end(key)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._keys
