"""Routing figures of a synthetic model from its routing plan alone (no weights, no mlx-lm).

A real-shape model is gigabytes per layer; calibrating its routing knobs by building it is out
of reach. Here the probe tokens (prompts, then the planted decode walk) are routed by the
plan's own routers on a stand-in for the hidden state: the token's embedding plus Gaussian
drift accumulating layer by layer (`drift_sigma` per layer, the rms of what each layer adds,
relative to the embedding's rms of 1, fitted on built models: see `DRIFT_PER_KNOB`). The
figures are those `routing_stats` measures through mlx-lm: per-layer LRU hit rate,
previous-token reuse vs chance, next-layer-gate prefetch recall.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.synth.routing import RoutingPlan, depth_scale, lru_hit_rate, reuse_fraction

# Rms each layer adds to the residual stream per unit of the `drift` knob, relative to the
# embedding (rms 1), for a top-8 model. Fitted so this estimate matches mlx-lm's figures on
# built tiny (top-4) and small (top-8) models: `benchmarks/routing_stats.py --validate` shows
# the gap (small: hit -0.03, reuse -0.14x, recall +0.02).
DRIFT_PER_KNOB = 0.3


def drift_sigma(drift: float, top_k: int) -> float:
    """Per-layer drift rms: attention's o_proj (drift/4) plus the MoE's mixture of top_k
    experts (down_proj scaled by drift), which adds ~1/sqrt(top_k) of one expert's output."""
    per_k = np.sqrt(0.25**2 + 1.0 / top_k) / np.sqrt(0.25**2 + 1.0 / 8)
    return float(DRIFT_PER_KNOB * drift * per_k)


@dataclass(frozen=True)
class PlanStats:
    hit_rate: dict[float, float]  # cache fraction -> mean per-layer LRU hit rate
    reuse_vs_chance: float
    next_layer_recall: float
    layers: int
    tokens: int


def simulate(
    config: dict[str, Any],
    cache_fractions: tuple[float, ...] = (0.125, 0.25),
    layers: int | None = None,
    prompts: int = 4,
    prompt_len: int = 48,
    decode_tokens: int = 64,
) -> PlanStats:
    """Route the probe suite through the plan of `config` (a synth config.json) on its first
    `layers` MoE layers (None = all)."""
    plan = RoutingPlan.from_config(config)
    k, E = int(config["num_experts_per_tok"]), plan.num_experts
    first = int(config.get("first_k_dense_replace", 0))
    depth = int(config["num_hidden_layers"])
    moe = list(range(first, depth))[: layers or None]
    sigma = drift_sigma(plan.knobs.drift * depth_scale(config), k)
    succ = plan.successor()
    rng = np.random.default_rng([plan.seed, 0xD21F7])
    routers = {layer: plan.router(layer) for layer in moe}
    routes: dict[int, list[list[list[int]]]] = {layer: [] for layer in moe}
    hits = total = 0
    for ids in plan.prompts(prompts, prompt_len):
        walk = list(ids)
        for _ in range(decode_tokens):  # greedy decode follows the planted walk
            walk.append(succ.get(walk[-1], walk[-1]))
        x = plan.embedding_rows(np.array(walk)).astype(np.float64)  # [T, H], rms 1 per row
        x /= np.sqrt(np.mean(x * x, axis=1, keepdims=True))
        seen: dict[int, np.ndarray] = {}  # MoE layer -> its normalized input
        for layer in range(moe[-1] + 1):
            # Each layer adds its drift before its MoE reads the stream (RMSNorm'd).
            x = x + rng.standard_normal(x.shape) * sigma
            if layer in routers:
                seen[layer] = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))
                routes[layer].append(_top_k(seen[layer] @ routers[layer].T, k).tolist())
        for a, b in itertools.pairwise(moe):
            pred = _top_k(seen[a] @ routers[b].T, k)  # next layer's gate on this layer's input
            actual = routes[b][-1]
            hits += sum(len(set(p) & set(q)) for p, q in zip(pred.tolist(), actual, strict=True))
            total += len(actual) * k
    hit = {
        f: float(np.mean([lru_hit_rate(routes[m], max(1, round(f * E))) for m in moe]))
        for f in cache_fractions
    }
    reuse = float(np.mean([reuse_fraction(routes[m]) for m in moe]))
    return PlanStats(
        hit_rate=hit,
        reuse_vs_chance=reuse / (k / E),
        next_layer_recall=hits / max(total, 1),
        layers=len(moe),
        tokens=sum(len(r) for r in routes[moe[0]]) if moe else 0,
    )


def _top_k(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-logits, k - 1, axis=-1)[:, :k]
