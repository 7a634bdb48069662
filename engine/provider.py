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

from engine.cache import ExpertCache
from engine.prefetch import Prefetcher
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
    ) -> None:
        self.store = store
        self.reader = reader
        self.cache = cache
        self.prefetcher = prefetcher
        self.compute_dtype = compute_dtype
        self.stats = FetchStats()
        self.tracer: Any = None  # engine.trace.Tracer while a probe records a routing trace
        # What one decoded expert costs in the cache: the arrays we keep, not the disk span.
        self._entry_bytes: int | None = None

    def fetch(self, layer: int, experts: list[int], x: mx.array) -> list[Weights]:
        if self.tracer is not None:
            self.tracer.on_fetch(layer, experts, x)
        t0 = time.perf_counter()
        st = self.stats
        st.requests += len(experts)
        staged = self.prefetcher.take(layer, experts) if self.prefetcher else {}
        out: list[Weights | None] = [None] * len(experts)
        pending: list[tuple[int, int, Future]] = []
        for i, e in enumerate(experts):
            hit = self.cache.get((layer, e))
            if hit is not None:
                out[i] = hit
                st.cache_hits += 1
            elif e in staged:
                pending.append((i, e, staged[e]))
                st.staged_hits += 1
            else:
                pending.append((i, e, self.reader.submit(layer, e)))
                st.demand_reads += 1
        if self.prefetcher is not None:
            # Queue the guesses behind this layer's demand reads so they never delay it.
            self.prefetcher.after_fetch(layer, x)
        for i, e, fut in pending:
            tw = time.perf_counter()
            raw = fut.result()
            st.read_wait_s += time.perf_counter() - tw
            w = self._prepare(self.store.decode(raw, where=f"layer {layer} expert {e}"))
            self.cache.put((layer, e), w, self.entry_bytes(w))
            out[i] = w
        st.stall_s += time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def _prepare(self, w: Weights) -> Weights:
        """Once on load, so cached experts are ready to compute with."""
        return prepare_weights(w, self.compute_dtype)

    def entry_bytes(self, w: Weights) -> int:
        if self._entry_bytes is None:
            self._entry_bytes = int(sum(v.nbytes for v in w.values()))
        return self._entry_bytes

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.drain()
