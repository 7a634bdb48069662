"""The engine's expert cache: bounded by bytes, lru / lfu / pinned, safe under prefetch threads.

Keys are `(layer, expert)`; values are opaque (dicts of MLX arrays) with a byte size given at
`put`. INVARIANT: `used_bytes <= capacity_bytes` at every moment, so `cache_bytes` is a true
bound. *Pinned* entries (policy "pinned": the hottest keys of a routing profile that fit in
`pinned_fraction * capacity`) are never evicted; a `put` that could only fit by evicting them
returns False and changes nothing. Prefetched reads wait in the prefetcher's staging area, never
here, so nothing else needs protecting from eviction.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from engine.contract import KNOBS

POLICIES = KNOBS["cache_policy"].choices
Key = Hashable  # (layer, expert) in the engine


class _Entry:
    __slots__ = ("freq", "nbytes", "value")

    def __init__(self, value: Any, nbytes: int) -> None:
        self.value = value
        self.nbytes = nbytes
        self.freq = 1


class ExpertCache:
    """A byte-bounded cache. `hot` (keys, hottest first) and `entry_bytes` serve "pinned":
    without `entry_bytes` the size of the first `put` is taken (experts are uniform)."""

    def __init__(
        self,
        capacity_bytes: int,
        policy: str = "lru",
        pinned_fraction: float = 0.5,
        hot: Iterable[Key] | None = None,
        entry_bytes: int | None = None,
        on_evict: Callable[[Key, Any], None] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"cache policy must be one of {POLICIES}, got {policy!r}")
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        if not 0.0 <= pinned_fraction <= 1.0:
            raise ValueError(f"pinned_fraction must be in [0, 1], got {pinned_fraction}")
        self.policy = policy
        self.pinned_fraction = pinned_fraction
        self._capacity = capacity_bytes
        self._hot = list(hot) if hot is not None else []
        self._pinned: frozenset[Key] = frozenset()
        self._pin_ready = False
        # LRU order for lru/pinned: first = least recently used. LFU: buckets freq -> keys in
        # recency order, so "least frequent, ties to least recent" is the first key of the
        # lowest bucket.
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._buckets: dict[int, OrderedDict[Key, None]] = {}
        self._used = 0
        self._locked = 0  # resident bytes that may not be evicted (pinned)
        self._lock = threading.RLock()
        # Told about every value that leaves the cache (the arena frees its slot).
        self._on_evict = on_evict
        if entry_bytes is not None:
            self._set_pinned(entry_bytes)

    # ---- reading -----------------------------------------------------------------------------

    def get(self, key: Key) -> Any | None:
        """The value, or None (a hit refreshes recency/frequency; the provider counts hits)."""
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                return None
            self._touch(key, e)
            return e.value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    # ---- writing -----------------------------------------------------------------------------

    def put(self, key: Key, value: Any, nbytes: int) -> bool:
        """Insert or replace; evicts by policy to make room. False = it cannot fit (capacity 0,
        bigger than the cache, or only pinned entries left to evict)."""
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            if not self._pin_ready and self.policy == "pinned":
                self._set_pinned(nbytes)
            old = self._entries.get(key)
            if old is not None and old.nbytes == nbytes:
                if self._on_evict is not None and old.value is not value:
                    self._on_evict(key, old.value)
                old.value = value
                self._touch(key, old, count=False)
                return True
            locked = self._is_locked(key)
            old_bytes = old.nbytes if old is not None else 0
            # Room we could make: everything but locked entries (this key's old copy goes too).
            free = self._capacity - self._locked + (old_bytes if locked else 0)
            if nbytes > free or self._capacity == 0:
                return False
            freq = 1
            if old is not None:
                freq = old.freq
                self._remove(key, old)
            while self._used + nbytes > self._capacity:
                self._evict_one()
            e = _Entry(value, nbytes)
            e.freq = freq
            self._entries[key] = e
            if self.policy == "lfu":
                self._buckets.setdefault(freq, OrderedDict())[key] = None
            self._used += nbytes
            if locked:
                self._locked += nbytes
            return True

    def set_capacity(self, capacity_bytes: int) -> bool:
        """Shrink or grow (memory-budget enforcement). If locked entries exceed the new size,
        capacity stops at what they hold (the invariant wins) and False is returned."""
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        with self._lock:
            target = max(capacity_bytes, self._locked)
            while self._used > target:
                self._evict_one()
            self._capacity = target
            return target == capacity_bytes

    # ---- internals (caller holds the lock) ---------------------------------------------------

    def _set_pinned(self, entry_bytes: int) -> None:
        self._pin_ready = True
        if self.policy != "pinned" or entry_bytes <= 0:
            return
        n = int(self.pinned_fraction * self._capacity) // entry_bytes
        self._pinned = frozenset(self._hot[:n])
        for k in self._pinned:  # already-resident hot keys become locked now
            e = self._entries.get(k)
            if e is not None:
                self._locked += e.nbytes

    def _is_locked(self, key: Key) -> bool:
        return key in self._pinned

    def _touch(self, key: Key, e: _Entry, count: bool = True) -> None:
        self._entries.move_to_end(key)
        if self.policy == "lfu":
            bucket = self._buckets[e.freq]
            if count:
                del bucket[key]
                if not bucket:
                    del self._buckets[e.freq]
                e.freq += 1
                self._buckets.setdefault(e.freq, OrderedDict())[key] = None
            else:
                bucket.move_to_end(key)

    def _remove(self, key: Key, e: _Entry) -> None:
        del self._entries[key]
        if self._on_evict is not None:
            self._on_evict(key, e.value)
        self._used -= e.nbytes
        if self._is_locked(key):
            self._locked -= e.nbytes
        if self.policy == "lfu":
            bucket = self._buckets[e.freq]
            del bucket[key]
            if not bucket:
                del self._buckets[e.freq]

    def _victim(self) -> Key:
        if self.policy == "lfu":
            for f in sorted(self._buckets):
                for k in self._buckets[f]:
                    if not self._is_locked(k):
                        return k
        else:
            for k in self._entries:
                if not self._is_locked(k):
                    return k
        # Unreachable while _locked is accounted right: put/set_capacity check room first.
        raise RuntimeError("expert cache: nothing evictable (accounting bug)")

    def _evict_one(self) -> None:
        k = self._victim()
        self._remove(k, self._entries[k])
