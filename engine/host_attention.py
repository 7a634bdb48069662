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
every position. Mirrors mlx-lm's qwen3_moe `Attention` (the modules named in ATTENTION);
floats differ from MLX's fused kernels by rounding only (tests/test_cpu_chain.py).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import KVCache

from engine.cpu_linear import CpuLinear, SiblingLinear

# mlx-lm attention classes whose decode step `HostAttention` computes.
ATTENTION = {("mlx_lm.models.qwen3_moe", "Attention")}


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = np.einsum("hd,hd->h", x, x, dtype=np.float32)[:, None] / np.float32(x.shape[-1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * w


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
        self.h, self.h_kv = int(attn.n_heads), int(attn.n_kv_heads)
        self.scale = np.float32(attn.scale)
        self.norms = [
            (np.array(attn[n].weight.astype(mx.float32)), float(attn[n].eps))
            for n in ("q_norm", "k_norm")
        ]
        rope = attn["rope"]
        half = int(rope.dims) // 2
        self.inv_freq = (float(rope.base) ** (-np.arange(0, half, dtype=np.float64) / half)).astype(
            np.float32
        )

    def _rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        ang = np.float32(pos) * self.inv_freq
        c, s = np.cos(ang), np.sin(ang)
        half = self.inv_freq.size
        x1, x2 = x[:, :half], x[:, half : 2 * half]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[:, 2 * half :]], axis=1)

    def __call__(self, a: np.ndarray, cache: KVCache) -> np.ndarray:
        y = self.rows.fused.host(a)  # (1, q | k | v)
        c1, c2 = self.cuts
        q = y[0, :c1].reshape(self.h, -1)
        k = y[0, c1:c2].reshape(self.h_kv, -1)
        v = y[0, c2:].reshape(self.h_kv, -1)
        (wq, eq), (wk, ek) = self.norms
        hk = _mirror(cache)
        pos = cache.offset
        q = self._rope(_rms(q, wq, eq), pos)
        k = self._rope(_rms(k, wk, ek), pos)
        hk.append(k, v)
        cache.offset += 1
        g = self.h // self.h_kv  # query heads per key/value head
        keys, vals = hk.k[:, : hk.n], hk.v[:, : hk.n]
        s = np.einsum("grd,gnd->grn", q.reshape(self.h_kv, g, -1), keys) * self.scale
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        o = np.einsum("grn,gnd->grd", p, vals).reshape(1, -1)
        return self.o.host(np.ascontiguousarray(o, np.float32))


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
    rope = attn.get("rope")
    if type(rope) is not nn.RoPE or rope.traditional or float(rope.scale) != 1.0:
        return None
    return HostAttention(attn)
