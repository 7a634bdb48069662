"""Engine: a packed store + an EngineConfig -> a model that streams its experts, with counters.

This file wires the parts (model, reader, cache, prefetcher, provider) and owns the memory
budget arithmetic; each part's mechanism lives in its own file.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx

from engine import kernels
from engine.arena import ExpertArena, cpu_experts_unsupported, slot_bytes
from engine.cache import ExpertCache
from engine.config import EngineConfig
from engine.cpu_chain import chain_layers
from engine.cpu_linear import keep_embeddings_16bit, use_cpu_linears
from engine.errors import ConfigError, MemoryBudgetError
from engine.families import text_config
from engine.generate import Generation, generate
from engine.model import (
    compute_dtype,
    family_of,
    load_streaming_model,
    model_top_k,
    routers,
    set_experts_per_token,
    streaming_blocks,
)
from engine.pagecache import PageCacheBudget, evict, resident_bytes_many
from engine.prefetch import Prefetcher
from engine.procstats import current_rss, disk_read_bytes, return_large_frees_to_os
from engine.provider import ExpertProvider
from engine.reader import ExpertReader
from engine.store import Store

__all__ = ["Engine", "check_variant", "resolve_compute_path"]

MLX_CACHE_LIMIT = 16 << 20  # MLX's buffer cache under a memory budget
# Runtime memory the budget reserves beyond the process at start-up: MLX's buffer cache, the
# activations and KV cache of a probe-sized context, reader buffers. The governor (see
# Engine._govern) shrinks the expert cache if a run needs more.
RUNTIME_RESERVE = MLX_CACHE_LIMIT + (48 << 20)
SCAN_SHARE_INVERSE = 20  # the governor's page-cache scans take <= ~1/20 of the run
PROMPT_LOGITS_TOKENS = 64  # mlx-lm computes a prompt's logits at every position


def runtime_reserve(vocab: int) -> int:
    """RUNTIME_RESERVE plus a prompt's logits (float32, MLX's and the lm_head kernel's copy):
    with a real vocabulary (152k) a 48-token prefill alone is ~60 MB of RSS."""
    return RUNTIME_RESERVE + 2 * 4 * vocab * PROMPT_LOGITS_TOKENS


def resolve_compute_path(name: str) -> str:
    """ "auto" -> "cpu" where MLX computes on the CPU (its reference BLAS is the bottleneck
    there), else "mlx" (Metal/CUDA)."""
    if name != "auto":
        return name
    return "cpu" if mx.default_device() == mx.cpu else "mlx"


def check_variant(config: EngineConfig, store: Store) -> None:
    """Store-variant knobs, when set, must describe the store being run."""
    wanted = {
        "quant_bits": (config.quant_bits, store.bits),
        "quant_group_size": (
            config.quant_group_size,
            store.group_size if store.bits < 16 else None,
        ),
        "layout": (config.layout, store.layout),
    }
    for knob, (want, have) in wanted.items():
        if want is None or (knob == "quant_group_size" and have is None):
            continue
        if want != have:
            raise ConfigError(
                f"{knob} = {want!r} but store {store.root} has {have!r}; pack a store with "
                f"that variant or unset {knob} in the config"
            )


class Engine:
    """Open with `Engine(store_path, config)`; use as a context manager to release threads."""

    def __init__(self, store: str | Path | Store, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.store = store if isinstance(store, Store) else Store.open(store)
        check_variant(config, self.store)
        if config.cache_policy == "pinned" and self.store.profile() is None:
            raise ConfigError(
                f"cache_policy = 'pinned' needs a routing profile, and {self.store.root} has no "
                "profile.json (pack calibrates only models that fit in half of RAM); use "
                "cache_policy lru or lfu for this store"
            )
        self.family = family_of(self.store)
        path = resolve_compute_path(config.compute_path)
        dense_cpu = path == "cpu"
        dtype = compute_dtype(config.compute_dtype)
        return_large_frees_to_os()  # freed read buffers must leave RSS (see procstats)
        if config.memory_budget_bytes is not None or config.expert_memory_fraction is not None:
            # MLX keeps freed buffers for reuse; under a budget that cache is bounded and
            # counted, from the load on (swapping in the CPU linears frees the loaded copies).
            mx.set_cache_limit(MLX_CACHE_LIMIT)
        self.model, self.model_config = load_streaming_model(
            self.store, None if dense_cpu else dtype
        )
        why = cpu_experts_unsupported(self.store, streaming_blocks(self.model))
        if why is not None and config.compute_path == "cpu":
            raise ConfigError(
                f"compute_path = 'cpu' cannot compute the experts of {self.store.root}: {why}; "
                "use compute_path = 'auto' (MLX computes them) or 'mlx'"
            )
        cpu = dense_cpu and why is None  # experts on the CPU kernels too
        # "cpu": every matrix on engine.kernels; "cpu+mlx-experts": dense layers only.
        self.compute_path = path if cpu or not dense_cpu else "cpu+mlx-experts"
        if dense_cpu:
            # Dense layers to the CPU kernels before the cast, so 16-bit weights stay 16-bit.
            self.dense_bytes = use_cpu_linears(self.model) + keep_embeddings_16bit(self.model)
            self.model.set_dtype(mx.float32)
            kernels.set_wait_policy(config.compute_wait)  # before the threads start
            kernels.warm_up()  # the JIT's memory is part of the process the budget measures
            mx.clear_cache()  # the MLX copies the CPU linears replaced
        if config.experts_per_token is not None:
            set_experts_per_token(
                self.model, self.family, config.experts_per_token, self.store.num_experts
            )
        self.top_k = model_top_k(self.model, self.family)
        self.arena_used = cpu
        self.files = [self.store.root / le.file for le in self.store.layers]
        self.dense_files = sorted(self.store.dense_dir.glob("*.safetensors"))
        cache_bytes, page_allowance = self._budget()
        self.page_budget = (
            PageCacheBudget(page_allowance)
            if page_allowance is not None and config.io_mode != "direct"
            else None
        )
        # CPU path: experts live in arena slots; the cache owns some, the layer being computed
        # borrows up to top_k more (a prompt's experts go through in groups of that size), and
        # prefetch guesses fill theirs ahead of the layer.
        slots = (self._cache_slots(cache_bytes), self.top_k, self.staging_experts)
        self.arena = ExpertArena(self.store, *slots) if cpu else None
        self.reader = ExpertReader(
            self.store,
            config.io_mode,
            config.read_chunk_bytes,
            config.io_threads,
            page_budget=self.page_budget,
            post=self.arena.load if self.arena is not None else None,
            discard=self.arena.release if self.arena is not None else None,
        )
        self.cache = ExpertCache(
            cache_bytes,
            config.cache_policy,
            pinned_fraction=config.pinned_fraction,
            hot=self._hot_keys(),
            entry_bytes=self.entry_bytes,
            on_evict=(lambda _key, slot: self.arena.free(slot)) if self.arena else None,
        )
        self.prefetcher = (
            Prefetcher(
                mode=config.prefetch,
                depth=config.prefetch_depth,
                width=config.prefetch_width or self.top_k,
                moe_layers=self.store.moe_layers,
                routers=routers(self.model, self.family),
                submit=functools.partial(self.reader.submit, speculative=True),
                is_cached=self.cache.__contains__,
                drop=self.arena.release_read if self.arena is not None else lambda _f: None,
            )
            if config.prefetch != "none"
            else None
        )
        self.provider = ExpertProvider(
            self.store,
            self.reader,
            self.cache,
            self.prefetcher,
            dtype,
            self.entry_bytes,
            arena=self.arena,
        )
        for block in streaming_blocks(self.model):
            block.bind(self.provider, dtype, arena=self.arena)
        # CPU path: layers of the families engine.cpu_chain knows compute on the host
        self.chained_layers, self.host_attention_layers = (
            chain_layers(self.model) if cpu else (0, 0)
        )
        self.cache_bytes = cache_bytes
        self._scan_due, self._scanned = 0.0, 0  # memory_bytes: the last page-cache scan

    # ---- memory ------------------------------------------------------------------------------

    @functools.cached_property
    def entry_bytes(self) -> int:
        """RAM one cached expert takes: an arena slot on the CPU path (engine.kernels layout);
        on the MLX path the decoded arrays (float32 compute doubles 16-bit weights, quantized
        experts are kept as stored: see streaming.prepare_weights)."""
        if self.arena_used:
            return slot_bytes(self.store)
        data = sum(t.nbytes for t in self.store.expert_tensors)
        if self.config.compute_dtype == "float32" and self.store.bits >= 16:
            data = sum(
                t.nbytes * (2 if t.dtype in ("bfloat16", "float16") else 1)
                for t in self.store.expert_tensors
            )
        return data

    @functools.cached_property
    def staging_experts(self) -> int:
        """Prefetch guesses read ahead of their layer at a time: depth x width."""
        cfg = self.config
        if cfg.prefetch == "none":
            return 0
        return cfg.prefetch_depth * (cfg.prefetch_width or self.top_k)

    @functools.cached_property
    def working_bytes(self) -> int:
        """RAM a step needs beyond the cache: a layer's experts and the staged guesses, each
        in its repacked form (an arena slot on the CPU path: the reader repacks into it), plus
        each reader thread one expert's raw bytes."""
        cfg = self.config
        held = self.top_k + self.staging_experts
        extra = 0 if self.arena_used else self.top_k  # MLX path: decoded copies + their reads
        raw = min(cfg.io_threads, held) * self.store.expert_span
        return (held + extra) * self.entry_bytes + raw

    def _budget(self) -> tuple[int, int | None]:
        """(engine cache bytes, page-cache allowance) under the memory budget; sets
        self.memory_budget (memory_budget_bytes, or the one expert_memory_fraction defines)."""
        cfg = self.config
        self.memory_budget = cfg.memory_budget_bytes
        if cfg.memory_budget_bytes is None and cfg.expert_memory_fraction is None:
            return cfg.cache_bytes, None
        gc.collect()  # an engine closed just before in this process must not count as ours
        # Dense weights are loaded; their file pages in the page cache are dead weight now.
        for f in self.dense_files:
            evict(f)
        base = current_rss()
        reserve = runtime_reserve(int(text_config(self.model_config).get("vocab_size") or 0))
        if cfg.expert_memory_fraction is not None:
            # The model's minimum + a share of its experts, whatever the config and whichever
            # variant of the model this store is: experts count at the source checkpoint's
            # precision, so a 4-bit variant gets the bytes its 16-bit source would (a machine's
            # RAM does not grow when the weights shrink) and fits ~3.5x more experts in them.
            one = self.store.source_expert_nbytes
            model_min = base + (self.top_k + 1) * one  # one token's experts + a read's pages
            experts = one * self.store.num_experts * len(self.store.layers)
            self.memory_budget = int(model_min + reserve + cfg.expert_memory_fraction * experts)
        budget = self.memory_budget
        assert budget is not None
        working = self.working_bytes
        # A buffered/mmap read caches at least the expert it reads: reserve it, not overdraw.
        floor = self.store.expert_span if cfg.io_mode != "direct" else 0
        minimum = base + working + floor + reserve
        if budget < minimum:
            what = (
                f"memory_budget_bytes = {budget:,}"
                if cfg.memory_budget_bytes is not None
                else f"expert_memory_fraction = {cfg.expert_memory_fraction} ({budget:,} bytes)"
            )
            raise MemoryBudgetError(
                f"{what} is below the minimum "
                f"{minimum:,} this store needs (process with dense weights {base:,} + one "
                f"layer's experts and reads in flight {working:,} + page cache {floor:,} + "
                f"runtime {reserve:,}); raise the budget, or use a smaller quant_bits store"
            )
        headroom = budget - minimum
        cache = min(cfg.cache_bytes, headroom)
        # Whatever the engine cache leaves is what the OS may keep of the store's pages.
        allowance = headroom - cache + floor
        return cache, allowance

    def _cache_slots(self, cache_bytes: int) -> int:
        """Arena slots the cache may own: what cache_bytes pays for, at most every expert."""
        every = self.store.num_experts * len(self.store.layers)
        return min(cache_bytes // self.entry_bytes, every)

    def _hot_keys(self) -> list[tuple[int, int]] | None:
        profile = self.store.profile()
        if profile is None:
            return None
        ranked = [
            (count, layer, e) for layer, counts in profile.items() for e, count in enumerate(counts)
        ]
        ranked.sort(reverse=True)
        return [(layer, e) for _, layer, e in ranked]

    def page_cache_bytes(self) -> int:
        """The store's bytes resident in the OS page cache now (they are RAM too)."""
        return resident_bytes_many([*self.files, *self.dense_files])

    # ---- running -----------------------------------------------------------------------------

    def generate(
        self,
        prompt: Sequence[int],
        max_tokens: int,
        *,
        eos: set[int] | None = None,
        keep_logits: bool = False,
        on_token: Callable[[int], None] | None = None,
    ) -> Generation:
        vocab = int(self.model_config.get("vocab_size", 0))
        bad = [t for t in prompt if not 0 <= int(t) < vocab] if vocab else []
        if bad:
            raise ConfigError(
                f"prompt token ids {bad[:5]} are outside the vocabulary 0..{vocab - 1}"
            )
        hook = on_token
        if self.memory_budget is not None:

            def hook(tok: int) -> None:
                self._govern()
                if on_token is not None:
                    on_token(tok)

        return generate(
            self.model, prompt, max_tokens, eos=eos, keep_logits=keep_logits, on_token=hook
        )

    def memory_bytes(self) -> int:
        """RAM the run holds now: RSS + the store's pages in the OS page cache. Direct I/O
        caches none (and a budget evicted the dense files' at start): skip the mincore scan,
        ~7% of a token when the governor asked for it every token. Otherwise the scan (0.3 s
        over a 30 GB store) is redone once its last result is SCAN_SHARE_INVERSE times its
        cost old: between scans the page budget itself bounds what reads leave cached."""
        if self.config.io_mode == "direct" and self.memory_budget is not None:
            return current_rss()
        now = time.perf_counter()
        if now >= self._scan_due:
            self._scanned = self.page_cache_bytes()
            cost = time.perf_counter() - now
            self._scan_due = now + cost * SCAN_SHARE_INVERSE
        return current_rss() + self._scanned

    def _govern(self) -> None:
        """After each token under a budget: if RSS + the store's cached pages exceed it (the
        runtime grew past its reserve), shrink the expert cache by the excess and hand the
        freed slots' RAM back, then the page-cache allowance by what is left."""
        budget = self.memory_budget
        assert budget is not None
        over = self.memory_bytes() - budget
        if over <= 0:
            return
        shrink = min(over, self.cache.capacity_bytes)
        if shrink > 0:
            self.cache.set_capacity(self.cache.capacity_bytes - shrink)
            self.cache_bytes = self.cache.capacity_bytes
            if self.arena is not None:
                self.arena.drop_free()
        if over > shrink and self.page_budget is not None:
            floor = self.store.expert_span
            self.page_budget.allowance_bytes = max(
                floor, self.page_budget.allowance_bytes - (over - shrink)
            )

    def counters(self) -> dict[str, Any]:
        """Cumulative figures since the engine opened (callers diff them around a run)."""
        fs = self.provider.stats
        out: dict[str, Any] = {
            "expert_requests": fs.requests,
            "cache_hits": fs.cache_hits,
            "staged_hits": fs.staged_hits,
            "demand_reads": fs.demand_reads,
            "stall_s": fs.stall_s,
            "read_wait_s": fs.read_wait_s,
            "bytes_read": self.reader.bytes_read,
            "disk_read_bytes": disk_read_bytes(),
            "reads": self.reader.reads,
            "cache_used_bytes": self.cache.used_bytes,
        }
        if self.prefetcher is not None:
            ps = self.prefetcher.stats
            out.update(
                prefetch_predicted=ps.predicted,
                prefetch_used=ps.used,
                prefetch_correct=ps.correct,
                prefetch_issued=ps.issued,
            )
        return out

    def close(self) -> None:
        self.provider.close()
        self.reader.close()
        if self.page_budget is not None:
            self.page_budget.close()  # after the reader: its reads note into the budget

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
