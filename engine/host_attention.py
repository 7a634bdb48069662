"""A decode step's attention on the host, for attention modules simple enough to mirror.

In an all-cached decode step the attention core was the one thing a host-chained layer
(engine.cpu_chain) still left to MLX: a graph of ~10 small ops evaluated at the layer's sync,
~0.15 ms a layer, ~0.18 of a 4-bit token. For one new token (T = 1) this computes it in numpy
instead: fused q/k/v, per-head RMSNorm, RoPE, the KV cache, grouped-query softmax attention,
o_proj. A layer then makes no MLX call at all.

The KV cache stays mlx-lm's `KVCache` object (what generate() and mlx-lm's own loops hand the
model): its keys and values are mirrored on the host once per prompt (`HostKV`, the one sync
then), each host step appends to the mirror and advances `cache.offset`, and before MLX runs
that layer's attention again (a prompt: T > 1) the mirror is written back, so MLX always sees
every position. The mirror doubles the KV cache's RAM (MLX's copy stays, for prompts): small
beside the experts at the suite's lengths, and counted like any RSS by a memory budget.
Mirrors the mlx-lm modules named in ATTENTION; floats differ from MLX's fused kernels by
rounding only (tests/test_cpu_chain.py).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import KVCache

from engine.cpu_linear import CpuLinear, SiblingLinear
from engine.host_moe import rms_norm

# mlx-lm attention classes whose decode step `HostAttention` computes: q/k/v projections
# (biases allowed), optional q/k RMSNorm per head (qwen3_moe) or over the whole projection
# (olmoe), plain RoPE (either pair layout), grouped-query softmax attention, o_proj.
ATTENTION = {
    ("mlx_lm.models.qwen3_moe", "Attention"),
    ("mlx_lm.models.qwen2_moe", "Attention"),
    ("mlx_lm.models.olmoe", "Attention"),
    ("mlx_lm.models.mixtral", "MixtralAttention"),
}


def _rms(x: np.ndarray, norm: tuple[np.ndarray, float] | None) -> np.ndarray:
    """RMSNorm of each row of x (H, D) with weight (D,); x itself without a norm."""
    return x if norm is None else rms_norm(x, *norm)


def rope(x: np.ndarray, pos: int, inv_freq: np.ndarray, traditional: bool) -> np.ndarray:
    """mx.fast.rope of x (H, D) at one position: the first 2 * len(inv_freq) dims rotated in
    pairs (i, i + half), or (2i, 2i + 1) when traditional; the rest passed through."""
    ang = np.float32(pos) * inv_freq
    c, s = np.cos(ang), np.sin(ang)
    n = 2 * inv_freq.size
    if traditional:
        x1, x2 = x[:, 0:n:2], x[:, 1:n:2]
        out = np.empty_like(x)
        out[:, 0:n:2], out[:, 1:n:2] = x1 * c - x2 * s, x1 * s + x2 * c
        out[:, n:] = x[:, n:]
        return out
    x1, x2 = x[:, : n // 2], x[:, n // 2 : n]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[:, n:]], axis=1)


class HostKV:
    """One layer's keys and values, (H_kv, capacity, D) float32, the first `n` in use."""

    def __init__(self, k: np.ndarray, v: np.ndarray) -> None:
        n = k.shape[1]
        cap = max(256, 2 * n)
        self.k = np.zeros((k.shape[0], cap, k.shape[2]), np.float32)
        self.v = np.zeros((v.shape[0], cap, v.shape[2]), np.float32)
        self.k[:, :n], self.v[:, :n] = k, v
        self.n = n
        self.in_mlx = n  # positions MLX's arrays hold too

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        if self.n == self.k.shape[1]:
            grow = self.k.shape[1]
            self.k = np.concatenate([self.k, np.zeros_like(self.k[:, :grow])], axis=1)
            self.v = np.concatenate([self.v, np.zeros_like(self.v[:, :grow])], axis=1)
        self.k[:, self.n], self.v[:, self.n] = k, v
        self.n += 1


def _mirror(cache: KVCache) -> HostKV:
    hk: HostKV | None = getattr(cache, "_host_kv", None)
    if hk is None or hk.n != cache.offset:  # first host step of this prompt (or a reset)
        if cache.keys is None:
            raise RuntimeError("host attention needs a prompt in the KV cache first")
        k, v = cache.keys_and_values()
        hk = HostKV(np.array(k[0].astype(mx.float32)), np.array(v[0].astype(mx.float32)))
        cache._host_kv = hk
    return hk


def flush(cache: Any) -> None:
    """Write host-appended positions back into mlx-lm's cache before MLX attends over it."""
    hk: HostKV | None = getattr(cache, "_host_kv", None)
    if hk is None or hk.in_mlx == hk.n:
        return
    n, dtype = hk.n, cache.keys.dtype
    cache.offset = hk.in_mlx
    cache.update_and_fetch(
        mx.array(hk.k[None, :, hk.in_mlx : n]).astype(dtype),
        mx.array(hk.v[None, :, hk.in_mlx : n]).astype(cache.values.dtype),
    )
    hk.in_mlx = n


class HostAttention:
    """The decode step of one attention module, numpy (1, D) in -> (1, D) out."""

    def __init__(self, attn: nn.Module) -> None:
        q, k = attn["q_proj"], attn["k_proj"]
        self.rows = q._rows
        b = self.rows.bounds
        self.cuts = (b[q._index + 1], b[k._index + 1])  # q | k | v columns of the fused rows
        self.o: CpuLinear = attn["o_proj"]
        self.h, self.h_kv = _heads(attn)
        self.scale = np.float32(attn.scale)
        # per head (qwen3_moe: weight of head_dim) or over the whole projection (olmoe)
        self.norms = [
            (np.array(attn[n].weight.astype(mx.float32)), float(attn[n].eps)) if n in attn else None
            for n in ("q_norm", "k_norm")
        ]
        r = attn["rope"]
        half = int(r.dims) // 2
        exps = np.arange(0, half, dtype=np.float64) / half
        self.inv_freq = (float(r.base) ** -exps).astype(np.float32)
        self.traditional = bool(r.traditional)

    def _qk(self, x: np.ndarray, heads: int, norm: tuple[np.ndarray, float] | None) -> np.ndarray:
        if norm is not None and norm[0].size != x.size // heads:  # over the whole projection
            return _rms(x.reshape(1, -1), norm).reshape(heads, -1)
        return _rms(x.reshape(heads, -1), norm)

    def __call__(self, a: np.ndarray, cache: KVCache) -> np.ndarray:
        y = self.rows.fused.host(a)  # (1, q | k | v)
        c1, c2 = self.cuts
        v = y[0, c2:].reshape(self.h_kv, -1)
        hk = _mirror(cache)
        pos = cache.offset
        q = rope(self._qk(y[0, :c1], self.h, self.norms[0]), pos, self.inv_freq, self.traditional)
        k = rope(
            self._qk(y[0, c1:c2], self.h_kv, self.norms[1]), pos, self.inv_freq, self.traditional
        )
        hk.append(k, v)
        cache.offset += 1
        g = self.h // self.h_kv  # query heads per key/value head
        keys, vals = hk.k[:, : hk.n], hk.v[:, : hk.n]
        s = np.einsum("grd,gnd->grn", q.reshape(self.h_kv, g, -1), keys) * self.scale
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        o = np.einsum("grn,gnd->grd", p, vals).reshape(1, -1)
        return self.o.host(np.ascontiguousarray(o, np.float32))


def _heads(attn: nn.Module) -> tuple[int, int]:
    """(query heads, key/value heads), by the names mlx-lm's modules use."""
    h = getattr(attn, "n_heads", None) or attn.num_heads
    kv = getattr(attn, "n_kv_heads", None) or attn.num_key_value_heads
    return int(h), int(kv)


def host_attention(attn: nn.Module) -> HostAttention | None:
    """The host decode step of `attn`, or None when it is not one this file mirrors."""
    if (type(attn).__module__, type(attn).__name__) not in ATTENTION:
        return None
    parts = [attn.get(n) for n in ("q_proj", "k_proj", "v_proj")]
    if not all(isinstance(p, SiblingLinear) for p in parts) or not isinstance(
        attn.get("o_proj"), CpuLinear
    ):
        return None
    if len({id(p._rows) for p in parts}) != 1:
        return None
    if [p._index for p in parts] != [0, 1, 2]:
        return None
    r = attn.get("rope")
    if type(r) is not nn.RoPE or float(r.scale) != 1.0:
        return None  # scaled or YaRN-style RoPE: MLX's attention stays
    if any(n in attn and not isinstance(attn[n], nn.RMSNorm) for n in ("q_norm", "k_norm")):
        return None
    return HostAttention(attn)
