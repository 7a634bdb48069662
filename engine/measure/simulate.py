"""Trace-replay simulator: cache and prefetch figures for a config in milliseconds, no model run.

It replays a routing trace's fetches through the engine's own ExpertCache and the same
prefetch rules as engine/prefetch.py, so on the trace it was recorded from it predicts the
measured decode-phase hit rate; a time estimate comes from measured compute and disk rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.cache import ExpertCache
from engine.config import EngineConfig
from engine.measure.trace import DECODE, Trace


@dataclass
class Rates:
    compute_s_per_token: float  # decode time per token with every expert in RAM
    disk_bytes_per_s: float  # achievable read bandwidth at the config's read size


def simulate(
    trace: Trace,
    config: EngineConfig,
    *,
    hot: list[tuple[int, int]] | None = None,
    rates: Rates | None = None,
) -> dict[str, Any]:
    meta = trace.meta
    entry_bytes = int(meta["entry_bytes"])
    span = int(meta["expert_span"])
    top_k = int(config.experts_per_token or meta["top_k"])
    width = config.prefetch_width or top_k
    prefetching = config.prefetch != "none" and config.prefetch_depth > 0
    depth = min(config.prefetch_depth, trace.rank.shape[1] - 1) if prefetching else 0
    cache = ExpertCache(config.cache_bytes, config.cache_policy,
                        pinned_fraction=config.pinned_fraction, hot=hot,
                        entry_bytes=entry_bytes)  # fmt: skip
    moe_layers = tuple(meta["moe_layers"])
    pos = {layer: i for i, layer in enumerate(moe_layers)}
    staged: set[tuple[int, int]] = set()
    predicted: dict[int, set[int]] = {}
    last_used: dict[int, list[int]] = {}
    req = hits = demand = pref = pred_n = used_n = correct = 0
    decode_tokens = 0
    for i in range(len(trace)):
        layer = int(trace.layer[i])
        decode = int(trace.phase[i]) == DECODE
        experts = trace.fetch_experts(i).tolist()
        if decode and pos[layer] == 0:
            decode_tokens += 1
        used = set(experts)
        guess = predicted.pop(layer, None)
        if guess is not None and decode:
            pred_n += len(guess)
            used_n += len(used)
            correct += len(guess & used)
        mine = {k for k in staged if k[0] == layer}
        staged -= mine
        misses = []
        for e in experts:
            if cache.get((layer, e)) is not None:
                hits += decode
            else:
                misses.append(e)
                if (layer, e) not in mine:
                    demand += decode
        req += len(experts) if decode else 0
        if config.prefetch == "previous_token":
            last_used[layer] = [int(e) for e in trace.rank[i, 0, :width] if e >= 0]
        if depth and width:
            for d, target in enumerate(moe_layers[pos[layer] + 1 : pos[layer] + 1 + depth]):
                if config.prefetch == "previous_token":
                    g = last_used.get(target, [])
                else:
                    g = [int(e) for e in trace.rank[i, d + 1, :width] if e >= 0]
                if not g:
                    continue
                predicted.setdefault(target, set()).update(g)
                for e in g:
                    if (target, e) not in staged and (target, e) not in cache:
                        staged.add((target, e))
                        pref += decode
        for e in misses:
            cache.put((layer, e), True, entry_bytes)
    out: dict[str, Any] = {
        "cache_hit_rate": hits / req if req else 0.0,
        "bytes_read_per_token": (demand + pref) * span / decode_tokens if decode_tokens else 0.0,
        "demand_bytes_per_token": demand * span / decode_tokens if decode_tokens else 0.0,
        "prefetch_precision": correct / pred_n if pred_n else 0.0,
        "prefetch_recall": correct / used_n if used_n else 0.0,
        "decode_tokens": decode_tokens,
    }
    if rates is not None and decode_tokens:
        c = rates.compute_s_per_token
        stall = out["demand_bytes_per_token"] / rates.disk_bytes_per_s
        # Prefetch reads overlap compute; only what does not fit behind it adds time.
        spill = max(0.0, (out["bytes_read_per_token"] - out["demand_bytes_per_token"])
                    / rates.disk_bytes_per_s - c)  # fmt: skip
        out["decode_tok_s_estimate"] = 1.0 / (c + stall + spill)
    return out
