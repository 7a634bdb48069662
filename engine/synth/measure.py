"""Figures that measure a synthetic model's routing: LRU hit rate, previous-token reuse and
next-layer-gate recall, from the routes mlx-lm takes on the model's probe suite.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.families import Family, family_for, moe_blocks, text_config
from engine.routes import record_routes
from engine.suite import Prompt, load_suite

# ---- measurement ---------------------------------------------------------------------------


def lru_hit_rate(seqs: list[list[list[int]]], capacity: int) -> float:
    """Hit rate of one LRU per sequence over per-token expert sets (each sequence starts cold).

    A token looks up all its experts before loading the misses, as an engine does, so one of
    its misses never evicts an expert the same token is about to hit.
    """
    hits = total = 0
    for seq in seqs:
        cache: OrderedDict[int, None] = OrderedDict()
        for experts in seq:
            hit = [e for e in experts if e in cache]
            hits += len(hit)
            total += len(experts)
            for e in hit:
                cache.move_to_end(e)
            for e in experts:
                if e not in cache:
                    cache[e] = None
                    if len(cache) > capacity:
                        cache.popitem(last=False)
    return hits / max(total, 1)


def reuse_fraction(seqs: list[list[list[int]]]) -> float:
    """Mean share of a token's experts that the previous token also used."""
    shares = [
        len(set(cur) & set(prev)) / len(cur)
        for seq in seqs
        for prev, cur in itertools.pairwise(seq)
    ]
    return float(np.mean(shares)) if shares else 0.0


def routing_stats(
    model_dir: str | Path, prompts: Sequence[Prompt] | None = None, cache_fraction: float = 0.25
) -> dict[str, float]:
    """Route the probe suite through the checkpoint in mlx-lm and measure cache-relevant figures.

    prompts: engine.suite Prompts; None = the checkpoint's probe_suite.toml.
    Returns hit_rate (per-layer LRU holding cache_fraction of experts), reuse (previous-token
    expert reuse), reuse_vs_chance (reuse / (k/E)), next_layer_recall (layer l+1's router on the
    hidden state entering layer l's MoE vs l+1's real experts) and decode_distinct (share of
    distinct tokens among decoded ones; low = greedy decode collapsed into a loop).
    """
    rec = record_routing(Path(model_dir), prompts)
    E, k, layers = rec.num_experts, rec.top_k, rec.layers
    cap = max(1, round(cache_fraction * E))
    hit = [lru_hit_rate([p[layer] for p in rec.routes], cap) for layer in layers]
    reuse = [reuse_fraction([p[layer] for p in rec.routes]) for layer in layers]
    return {
        "hit_rate": float(np.mean(hit)),
        "reuse": float(np.mean(reuse)),
        "reuse_vs_chance": float(np.mean(reuse)) / (k / E),
        "next_layer_recall": rec.next_layer_recall,
        "decode_distinct": rec.decode_distinct,
        "num_experts": E,
        "top_k": k,
        "cache_experts": cap,
        "moe_layers": len(layers),
        "tokens": rec.tokens,
    }


# ---- recording routes through mlx-lm -------------------------------------------------------


@dataclass
class RouteRecord:
    num_experts: int
    top_k: int
    layers: list[int]
    routes: list[dict[int, list[list[int]]]]  # per prompt: layer -> per-token expert ids
    next_layer_recall: float
    decode_distinct: float
    tokens: int
    decoded: list[list[int]]  # per prompt: greedy tokens (the prompt's last id first)


def _route(family: Family, block: nn.Module, x: mx.array) -> np.ndarray:
    """Expert ids block's own router picks for x: [N, H] -> [N, k]."""
    if family.model_type == "deepseek_v3":
        return np.array(block.gate(x)[0])
    k = family.get_top_k(block)
    logits = block.gate(x)  # softmax is monotone: top-k of logits = top-k of probabilities
    return np.array(mx.argpartition(-logits, kth=k - 1, axis=-1)[..., :k])


def record_routing(model_dir: Path, prompts: Sequence[Prompt] | None = None) -> RouteRecord:
    """Prefill + greedy decode each prompt in mlx-lm, recording every MoE layer's routes."""
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    model, config = load_model(model_dir, lazy=True, strict=True)
    if prompts is None:
        vocab = int(text_config(config)["vocab_size"])
        prompts = load_suite(model_dir / "probe_suite.toml", vocab_size=vocab).prompts
    model.set_dtype(mx.float32)  # mlx CPU gather_mm runs float32 only; routing is unchanged
    family = family_for(config)
    blocks = moe_blocks(model)
    sinks = record_routes(model, keep_inputs=True)
    layers = [b[0] for b in blocks]
    routes: list[dict[int, list[list[int]]]] = []
    hits = total = 0
    distinct: list[float] = []
    decoded_all: list[list[int]] = []
    n_tokens = 0
    for prompt in prompts:
        for s in sinks.values():
            s.clear()
        cache = make_prompt_cache(model)
        ids = mx.array(prompt.ids)[None]
        decoded: list[int] = []
        for _ in range(prompt.decode_tokens + 1):
            logits = model(ids, cache=cache)
            nxt = int(mx.argmax(logits[0, -1]).item())
            decoded.append(nxt)
            ids = mx.array([[nxt]])
        decoded = decoded[:-1]  # the last token was predicted but never fed back
        distinct.append(len(set(decoded)) / max(len(decoded), 1))
        decoded_all.append([int(prompt.ids[-1]), *decoded])
        per_layer: dict[int, list[list[int]]] = {}
        xs: dict[int, np.ndarray] = {}
        for layer in layers:
            x = np.concatenate([a[0].reshape(-1, a[0].shape[-1]) for a in sinks[layer]])
            idx = np.concatenate([a[1].reshape(-1, a[1].shape[-1]) for a in sinks[layer]])
            per_layer[layer] = idx.tolist()
            xs[layer] = x
        n_tokens += len(per_layer[layers[0]])
        routes.append(per_layer)
        for (la, _, _), (lb, _, block_b) in itertools.pairwise(blocks):
            pred = _route(family, block_b, mx.array(xs[la]))
            for p, actual in zip(pred.tolist(), per_layer[lb], strict=True):
                hits += len(set(p) & set(actual))
                total += len(actual)
    E = int(config[family.num_experts_key])
    k = family.get_top_k(blocks[0][2])
    return RouteRecord(
        num_experts=E,
        top_k=k,
        layers=layers,
        routes=routes,
        next_layer_recall=hits / max(total, 1),
        decode_distinct=float(np.mean(distinct)) if distinct else 0.0,
        tokens=n_tokens,
        decoded=decoded_all,
    )
