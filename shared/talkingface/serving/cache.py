"""A least-recently-used cache bounded in bytes, for per-avatar state that the stage services
load on first use (the motion stage's postnets, the projection stage's indexes)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ByteLRU:
    """A thread-safe least-recently-used cache bounded by the summed size of its values.

    `get(key, load)` returns the cached value or calls `load()` (once per key at a time:
    concurrent callers for the same key wait for the first). A value larger than the whole
    bound is returned but not kept. `hits`, `misses` and `evictions` count since creation;
    with a `name` they are also exported as the talkingface_avatar_cache_* Prometheus series
    (label cache=name).
    """

    def __init__(
        self, max_bytes: int, sizeof: Callable[[Any], int], name: str | None = None
    ) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._sizeof = sizeof
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._metrics = _Metrics(name) if name else None

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _hit(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                if self._metrics:
                    self._metrics.hit.inc()
                return True, self._entries[key][0]
            return False, None

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        found, value = self._hit(key)
        if found:
            return value
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            try:
                found, value = self._hit(key)
                if found:
                    return value
                with self._lock:
                    self.misses += 1
                if self._metrics:
                    self._metrics.miss.inc()
                value = load()
                self._insert(key, value, self._sizeof(value))
                return value
            finally:
                with self._lock:
                    self._loading.pop(key, None)

    def _insert(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._bytes -= self._entries.pop(key)[1]
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
                self.evictions += 1
                if self._metrics:
                    self._metrics.evicted.inc()
            if self._metrics:
                self._metrics.nbytes.set(self._bytes)


class _Metrics:
    def __init__(self, name: str) -> None:
        from talkingface.serving.metrics import (
            AVATAR_CACHE_BYTES,
            AVATAR_CACHE_EVICTIONS,
            AVATAR_CACHE_LOOKUPS,
        )

        self.hit = AVATAR_CACHE_LOOKUPS.labels(name, "hit")
        self.miss = AVATAR_CACHE_LOOKUPS.labels(name, "miss")
        self.evicted = AVATAR_CACHE_EVICTIONS.labels(name)
        self.nbytes = AVATAR_CACHE_BYTES.labels(name)
