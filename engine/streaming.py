"""StreamingSwitchGLU: mlx-lm's SwitchGLU with weights from an expert provider, not a tensor.

Same call as `mlx_lm.models.switch_layers.SwitchGLU`: `(x, indices) -> y` with x (..., D) and
indices (..., k) giving y (..., k, D); routing, scoring and the weighted sum stay in mlx-lm's
MoE block. Only the routed experts' weights are fetched, once per call, through the provider
(cache -> reader), so the block holds no parameters.
"""

from __future__ import annotations

from typing import Any, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine import kernels as K
from engine.cpu_linear import HOST
from engine.errors import NonFiniteError

Weights = dict[str, mx.array]  # 'gate_proj.weight' -> array, plus '.scales'/'.biases' if quantized


def prepare_weights(w: Weights, dtype: mx.Dtype | None) -> Weights:
    """Raw expert tensors -> what the block computes with: floats cast to the compute dtype and
    unquantized weights stored transposed (in, out), so a decode step is `x @ w` without a
    per-call transpose (measured 1.5x faster per MoE layer on MLX's CPU backend).

    Quantized experts stay as stored: quantized_matmul takes float32 activations with bf16
    scales/biases and gives bit-identical results, so casting would only cost time and RAM."""
    if any(k.endswith(".scales") for k in w):
        return w
    out: Weights = {}
    for k, v in w.items():
        if v.dtype not in (mx.uint32, mx.uint8) and dtype is not None:
            v = v.astype(dtype)
        if k.endswith(".weight") and v.dtype not in (mx.uint32, mx.uint8):
            v = mx.contiguous(v.T)
        out[k] = v
    mx.eval(list(out.values()))
    return out


class Provider(Protocol):
    """Returns each routed expert's weights as `prepare_weights` leaves them (MLX path), or
    the arena slots holding them (CPU path: `fetch_slots`, then `release` after computing)."""

    def fetch(self, layer: int, experts: list[int], x: mx.array) -> list[Weights]: ...

    def fetch_slots(self, layer: int, experts: list[int], x: mx.array) -> np.ndarray: ...

    def release(self) -> None: ...


GLU_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # SwitchGLU: down(act(up, gate))
MLP_PROJECTIONS = ("fc1", "fc2")  # SwitchMLP: fc2(act(fc1(x)))


class StreamingSwitchGLU(nn.Module):
    """Drop-in for SwitchGLU (or, with `projections=MLP_PROJECTIONS`, SwitchMLP) whose expert
    weights live in an expert store. A projection's `.bias` (gpt_oss) is added when present."""

    def __init__(
        self,
        layer: int,
        activation: nn.Module,
        quant: tuple[int, int] | None,
        projections: tuple[str, ...] = GLU_PROJECTIONS,
    ) -> None:
        super().__init__()
        self.activation = activation
        self._projections = projections  # GLU (3) or plain MLP (2), as in mlx-lm's module
        # Plain attributes (not arrays/modules) so the block has no parameters to load.
        self._layer = layer
        self._quant = quant  # (bits, group_size) of the store's experts, None for 16-bit
        self._provider: Any = None
        self._compute_dtype: mx.Dtype | None = None  # None: keep the activations' dtype
        self._arena: Any = None  # engine.arena.ExpertArena when experts compute on the CPU path

    def bind(self, provider: Provider, compute_dtype: mx.Dtype | None, arena: Any = None) -> None:
        self._provider = provider
        self._compute_dtype = compute_dtype
        self._arena = arena

    def _linear(self, x: mx.array, w: Weights, proj: str) -> mx.array:
        y = self._matmul(x, w, proj)
        bias = w.get(f"{proj}.bias")  # (out,): SwitchLinear(bias=True), e.g. gpt_oss
        return y if bias is None else y + bias

    def _matmul(self, x: mx.array, w: Weights, proj: str) -> mx.array:
        # x: (n, in) -> (n, out); weight prepared as (in, out), or quantized (out, in*bits/32)
        if self._quant is None:
            return x @ w[f"{proj}.weight"]
        bits, group_size = self._quant
        return mx.quantized_matmul(
            x,
            w[f"{proj}.weight"],
            w[f"{proj}.scales"],
            w[f"{proj}.biases"],
            transpose=True,
            group_size=group_size,
            bits=bits,
        )

    def _expert(self, x: mx.array, w: Weights) -> mx.array:
        if self._projections == MLP_PROJECTIONS:
            return self._linear(self.activation(self._linear(x, w, "fc1")), w, "fc2")
        up = self._linear(x, w, "up_proj")
        gate = self._linear(x, w, "gate_proj")
        return self._linear(self.activation(up, gate), w, "down_proj")

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        if self._provider is None:
            raise RuntimeError(f"layer {self._layer}: streaming block used before bind()")
        if self._arena is not None:
            return self._call_cpu(x, indices)
        *lead, d = x.shape
        k = indices.shape[-1]
        # Routing must be known before any byte is read: this is the one sync point per layer.
        flat_idx = np.array(indices.reshape(-1))  # (T*k,)
        xt = x.reshape(-1, d)  # (T, D)
        order = np.argsort(flat_idx, kind="stable")
        uniq, starts = np.unique(flat_idx[order], return_index=True)
        weights = self._provider.fetch(self._layer, uniq.tolist(), xt)
        out_dtype = x.dtype
        if self._compute_dtype is not None:
            xt = xt.astype(self._compute_dtype)
        if flat_idx.size == k:
            # One token (decode): every routed expert sees the same row; no gather needed.
            by_expert = {int(e): self._expert(xt, w) for e, w in zip(uniq, weights, strict=True)}
            y = mx.concatenate([by_expert[int(e)] for e in flat_idx], axis=0)  # (k, D)
        else:
            # Many tokens (prefill): group (token, slot) pairs by expert, one matmul per expert.
            token_of = order // k  # token row of each sorted pair
            ends = [*starts[1:].tolist(), order.size]
            parts = []
            for w, s, e in zip(weights, starts.tolist(), ends, strict=True):
                rows = mx.array(token_of[s:e].astype(np.int32))
                parts.append(self._expert(xt[rows], w))
            inv = np.empty_like(order)
            inv[order] = np.arange(order.size)
            y = mx.concatenate(parts, axis=0)[mx.array(inv.astype(np.int32))]  # (T*k, D)
        return y.astype(out_dtype).reshape(*lead, k, d)

    def _call_cpu(self, x: mx.array, indices: mx.array) -> mx.array:
        """SwitchGLU's call on the CPU kernels: two host syncs (routing, x), see host_experts."""
        *lead, d = x.shape
        k = indices.shape[-1]
        flat_idx = HOST.to_host(indices, None).reshape(-1).astype(np.int64)  # routing before reads
        xn = HOST.to_host(x).reshape(-1, d)  # (T, D)
        y = self.host_experts(xn, flat_idx, k)
        return HOST.from_host(y.reshape(*lead, k, d)).astype(x.dtype)

    def host_experts(self, xn: np.ndarray, flat_idx: np.ndarray, k: int) -> np.ndarray:
        """CPU kernels, numpy in and out: xn (T, D) float32, flat_idx (T*k,) expert ids ->
        (T*k, D), row p the output of expert flat_idx[p] on token p // k. Pairs are grouped by
        expert, a group of at most `work_slots` experts computed by one multi-threaded kernel
        call; a prompt's tokens routed to one expert go through it together (prefill), in
        bounded memory. xn also makes the prefetch guesses and traces (on the host)."""
        d = xn.shape[1]
        order = np.argsort(flat_idx, kind="stable")
        uniq, starts = np.unique(flat_idx[order], return_index=True)
        ptr = np.append(starts, order.size).astype(np.int64)  # pairs of expert i: ptr[i]..ptr[i+1]
        pair_tok = (order // k).astype(np.int64)  # token row of each sorted pair
        out = np.empty((order.size, d), np.float32)  # (T*k, D) in sorted pair order
        arena, w = self._arena, self._arena.work_slots
        for g0 in range(0, uniq.size, w):
            g1 = min(g0 + w, uniq.size)
            group = uniq[g0:g1].tolist()
            slots = self._provider.fetch_slots(
                self._layer, group, xn, uniq.tolist() if g0 == 0 else None
            )
            p0, p1 = ptr[g0], ptr[g1]
            K.expert_ffn(
                arena.data,
                slots,
                arena.mats,
                xn,
                pair_tok[p0:p1],
                ptr[g0 : g1 + 1] - p0,
                out[p0:p1],
            )
            self._provider.release()
        if not np.isfinite(out).all():
            bad = sorted({int(e) for e in flat_idx[order][~np.isfinite(out).all(axis=1)]})
            raise NonFiniteError(
                f"layer {self._layer}: experts {bad[:8]} produced non-finite activations; "
                "run `moe-engine verify` on the store (corrupt weights) or use a wider dtype"
            )
        y = np.empty_like(out)
        y[order] = out
        return y
