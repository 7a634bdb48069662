"""Trace-replay simulator: cache and prefetch figures for a config in milliseconds, no model run.

It replays a routing trace's fetches through the engine's own ExpertCache and its own
Prefetcher (engine/prefetch.py), whose routers here answer from the rankings the trace recorded,
so on the trace it was recorded from it predicts the measured decode-phase figures; a time
estimate comes from measured compute and disk rates. Knobs the trace cannot answer for (deeper
or wider prefetch than it ranked, another top-k) are refused, never silently capped:
`unsupported(config)` says so before a study relies on it.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.cache import ExpertCache
from engine.config import EngineConfig
from engine.errors import ConfigError
from engine.measure.trace import DECODE, RANK_DEPTH, RANK_WIDTH, Trace
from engine.prefetch import Hidden, Prefetcher, PrefetchStats, Router


@dataclass
class Rates:
    compute_s_per_token: float  # decode time per token with every expert in RAM
    disk_bytes_per_s: float  # achievable read bandwidth at the config's read size


def unsupported(
    config: EngineConfig, depth: int = RANK_DEPTH, width: int = RANK_WIDTH
) -> str | None:
    """Why a trace (ranking `depth` layers ahead, `width` experts each) cannot model `config`,
    or None. A study screening with the simulator checks its space's extremes with this."""
    if config.prefetch == "none":
        return None
    if config.prefetch_depth > depth:
        return (
            f"prefetch_depth = {config.prefetch_depth}: a routing trace ranks the next {depth} "
            f"layers only, so the simulator cannot model deeper prefetch; keep prefetch_depth "
            f"<= {depth} or measure with probes"
        )
    if config.prefetch_width > width:
        return (
            f"prefetch_width = {config.prefetch_width}: a routing trace ranks {width} experts per "
            f"layer only; keep prefetch_width <= {width} or measure with probes"
        )
    return None


def simulate(
    trace: Trace,
    config: EngineConfig,
    *,
    hot: list[tuple[int, int]] | None = None,
    rates: Rates | None = None,
) -> dict[str, Any]:
    """Decode-phase cache_hit_rate, bytes per token and prefetch precision/recall of `config`
    replayed on `trace` (same definitions as engine.measure.probe), plus a speed estimate."""
    meta = trace.meta
    entry_bytes = int(meta["entry_bytes"])
    span = int(meta["expert_span"])
    top_k = int(meta["top_k"])
    if config.experts_per_token is not None and config.experts_per_token != top_k:
        raise ConfigError(
            f"experts_per_token = {config.experts_per_token}: the routing trace was recorded at "
            f"top-k {top_k} and routes change with it; record a trace with that config"
        )
    why = unsupported(config, depth=trace.rank.shape[1] - 1, width=trace.rank.shape[2])
    if why is None and config.prefetch != "none" and top_k > trace.rank.shape[2]:
        why = f"prefetch_width = 0 means top-k {top_k}, more than the trace ranks"
    if why is not None:
        raise ConfigError(why)
    cache = ExpertCache(
        config.cache_bytes,
        config.cache_policy,
        pinned_fraction=config.pinned_fraction,
        hot=hot,
        entry_bytes=entry_bytes,
    )
    moe_layers = tuple(int(x) for x in meta["moe_layers"])
    first = moe_layers[0]
    prefetcher = _replay_prefetcher(trace, config, cache, moe_layers, top_k)
    st = prefetcher.stats if prefetcher is not None else PrefetchStats()
    req = hits = demand = pref = pred_n = used_n = correct = decode_tokens = 0
    for i in range(len(trace)):
        layer = int(trace.layer[i])
        decode = int(trace.phase[i]) == DECODE
        experts = trace.fetch_experts(i).tolist()
        decode_tokens += int(decode and layer == first)
        before = (st.predicted, st.used, st.correct)
        staged = prefetcher.take(layer, experts) if prefetcher is not None else {}
        if decode:  # the prediction for this layer step, accounted when it runs (as the probe)
            pred_n += st.predicted - before[0]
            used_n += st.used - before[1]
            correct += st.correct - before[2]
            req += len(experts)
        misses = []
        for e in experts:
            if cache.get((layer, e)) is not None:
                hits += decode
            else:
                misses.append(e)
                demand += int(decode and e not in staged)
        if prefetcher is not None:
            issued = st.issued
            prefetcher.after_fetch(layer, np.array([[i]]))  # the "hidden state" is the row
            pref += (st.issued - issued) if decode else 0
        for e in misses:
            cache.put((layer, e), True, entry_bytes)
    per_token = span / decode_tokens if decode_tokens else 0.0
    out: dict[str, Any] = {
        "cache_hit_rate": hits / req if req else 0.0,
        # demand reads + every guess issued: an upper bound, as the engine skips a guess
        # still queued when its layer runs
        "bytes_read_per_token": (demand + pref) * per_token,
        "demand_bytes_per_token": demand * per_token,
        "prefetch_precision": correct / pred_n if pred_n else 0.0,
        "prefetch_recall": correct / used_n if used_n else 0.0,
        "decode_tokens": decode_tokens,
    }
    if rates is not None and decode_tokens:
        c = rates.compute_s_per_token
        stall = out["demand_bytes_per_token"] / rates.disk_bytes_per_s
        # Prefetch reads overlap compute; only what does not fit behind it adds time.
        spill = max(
            0.0,
            (out["bytes_read_per_token"] - out["demand_bytes_per_token"]) / rates.disk_bytes_per_s
            - c,
        )
        out["decode_tok_s_estimate"] = 1.0 / (c + stall + spill)
    return out


def _replay_prefetcher(
    trace: Trace, config: EngineConfig, cache: ExpertCache, moe_layers: tuple[int, ...], top_k: int
) -> Prefetcher | None:
    """The engine's Prefetcher, as runtime.Engine builds it, with routers that score experts
    by the trace's recorded ranking for fetch row x[0, 0] (ranked first, in rank order)."""
    if config.prefetch == "none":
        return None
    num_experts = int(trace.meta["num_experts"])
    pos = {layer: p for p, layer in enumerate(moe_layers)}

    def router(target: int) -> Router:
        def scores(x: Hidden) -> np.ndarray:
            i = int(x[0, 0].item())
            ranked = trace.rank[i, pos[target] - pos[int(trace.layer[i])]]
            ranked = ranked[ranked >= 0]
            s = np.full((1, num_experts), -1.0, np.float32)
            s[0, ranked] = np.arange(len(ranked), 0, -1, dtype=np.float32)
            return s

        return scores

    return Prefetcher(
        mode=config.prefetch,
        depth=config.prefetch_depth,
        width=config.prefetch_width or top_k,
        moe_layers=moe_layers,
        routers={layer: router(layer) for layer in moe_layers},
        submit=lambda _layer, _expert: Future(),  # a read that never needs to happen
        is_cached=cache.__contains__,
    )
