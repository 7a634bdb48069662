"""ExpertProvider: gives a streaming block its routed experts' weights (cache -> staged -> read).

It is the only place that decides where an expert's bytes come from, so it is also where the
per-run counters live: hits, misses, bytes read, time the model stalled waiting for I/O.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from engine.arena import ExpertArena
from engine.cache import ExpertCache
from engine.prefetch import Hidden, Prefetcher
from engine.reader import ExpertReader
from engine.store import Store
from engine.streaming import Weights, prepare_weights


@dataclass
class FetchStats:
    requests: int = 0  # expert requests by the model (a layer-step asks for k experts)
    cache_hits: int = 0
    staged_hits: int = 0  # served by a prefetch read (possibly still in flight)
    demand_reads: int = 0  # read because nothing had it
    stall_s: float = 0.0  # time inside fetch: lookups, waiting for reads, decode + prepare
    read_wait_s: float = 0.0  # of which blocked on reads (the I/O stall proper)

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0


class ExpertProvider:
    def __init__(
        self,
        store: Store,
        reader: ExpertReader,
        cache: ExpertCache,
        prefetcher: Prefetcher | None,
        compute_dtype: mx.Dtype | None,
        entry_bytes: int,
        arena: ExpertArena | None = None,
    ) -> None:
        self.store = store
        self.arena = arena
        self._fresh: list[tuple[tuple[int, int], int]] = []  # slots loaded by the last fetch
        self._staged: dict[int, Future] = {}  # the current layer step's prefetched reads
        self.reader = reader
        self.cache = cache
        self.prefetcher = prefetcher
        self.compute_dtype = compute_dtype
        self.stats = FetchStats()
        self.tracer: Any = None  # engine.measure.trace.Tracer while a probe records a routing trace
        # What one cached expert costs: the Engine's figure, which its memory budget uses too.
        self.entry_bytes = entry_bytes

    def _lookup(
        self,
        layer: int,
        experts: list[int],
        x: Hidden,
        out: list[Any],
        layer_experts: list[int] | None,
    ) -> list[tuple[int, int, Future]]:
        """Cache hits into `out`; reads (staged or new) for the rest. `layer_experts`: every
        expert the layer step routes to, on its first (or only) group: then the step is traced,
        its staged reads taken and the next guesses queued behind this group's demand reads."""
        if layer_experts is not None:
            if self.tracer is not None:
                self.tracer.on_fetch(layer, layer_experts, x)
            if self.prefetcher is not None:
                for fut in self._staged.values():  # handed over, then served by the cache
                    self.prefetcher.discard(fut)
            self._staged = self.prefetcher.take(layer, layer_experts) if self.prefetcher else {}
        st = self.stats
        st.requests += len(experts)
        staged = self._staged
        pending: list[tuple[int, int, Future]] = []
        for i, e in enumerate(experts):
            hit = self.cache.get((layer, e))
            if hit is not None:
                out[i] = hit
                st.cache_hits += 1
            elif e in staged:
                pending.append((i, e, staged.pop(e)))
                st.staged_hits += 1
            else:
                pending.append((i, e, self.reader.submit(layer, e)))
                st.demand_reads += 1
        if self.prefetcher is not None and layer_experts is not None:
            # Queue the guesses behind this layer's demand reads so they never delay it.
            self.prefetcher.after_fetch(layer, x)
        return pending

    def fetch_slots(
        self, layer: int, experts: list[int], x: Hidden, layer_experts: list[int] | None = None
    ) -> np.ndarray:
        """CPU path: the arena slot of each expert (hits are the cache's own slots; misses are
        loaded into free slots and offered to the cache by `release` once computed). A layer
        step's experts may come in groups: pass `layer_experts` (all of them) with the first."""
        arena = self.arena
        assert arena is not None, "fetch_slots needs an arena (CPU compute path)"
        t0 = time.perf_counter()
        slots: list[Any] = [None] * len(experts)
        pending = self._lookup(layer, experts, x, slots, layer_experts)
        taken = 0  # reads whose result is in the group's slots
        try:
            for i, e, fut in pending:
                tw = time.perf_counter()
                loaded = fut.result()  # a slot the reader filled (arena.load), or a buffer
                self.stats.read_wait_s += time.perf_counter() - tw
                slot = arena.slot_of(loaded)
                self._fresh.append(((layer, e), slot))
                slots[i] = slot
                taken += 1
        except BaseException:
            for _, slot in self._fresh:  # a failed read must not leak the group's slots
                arena.free(slot)
            self._fresh.clear()
            for _, _, fut in pending[taken + 1 :]:  # nor the group's reads still to come
                fut.add_done_callback(arena.release_read)
            raise
        self.stats.stall_s += time.perf_counter() - t0
        return np.array(slots, np.int64)

    def release(self) -> None:
        """After a group is computed: its freshly loaded experts go to the cache, or their
        slots back to the arena when the cache will not take them."""
        arena = self.arena
        assert arena is not None
        for key, slot in self._fresh:
            if not self.cache.put(key, slot, arena.slot_bytes):
                arena.free(slot)
        self._fresh.clear()

    def fetch(self, layer: int, experts: list[int], x: mx.array) -> list[Weights]:
        t0 = time.perf_counter()
        st = self.stats
        out: list[Any] = [None] * len(experts)
        for i, e, fut in self._lookup(layer, experts, x, out, experts):
            tw = time.perf_counter()
            raw = fut.result()
            st.read_wait_s += time.perf_counter() - tw
            w = self._prepare(self.store.decode(raw, where=f"layer {layer} expert {e}"))
            self.cache.put((layer, e), w, self.entry_bytes)
            out[i] = w
        st.stall_s += time.perf_counter() - t0
        return out

    def _prepare(self, w: Weights) -> Weights:
        """Once on load, so cached experts are ready to compute with."""
        return prepare_weights(w, self.compute_dtype)

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.drain()
