"""A decoder layer's feed-forward block computed on the host (numpy in, numpy out).

engine.cpu_chain runs a whole decoder layer between two host syncs; this file is its second
half: the block after post_attention_layernorm, mirroring mlx-lm's modules of these classes:

- softmax-routed MoE (qwen3_moe, olmoe: softmax, top k, renormalized if the model says so;
  mixtral: top k logits, softmax over those), plus qwen2_moe's sigmoid-gated shared expert;
- DeepSeek-V3's MoE (kimi_k25 reuses it): sigmoid scores plus a per-expert bias choose the
  experts, group-limited when n_group > 1, the unbiased scores weight them (renormalized,
  scaled by routed_scaling_factor), plus shared experts;
- a dense SwiGLU MLP (DeepSeek's first dense layers, qwen3_moe's mlp_only layers).

Every projection is a CpuLinear (SiblingLinear for a fused gate/up) and the experts are the
StreamingSwitchGLU's CPU kernels, so nothing here touches MLX. `host_block` answers None for a
block it does not know, and the layer keeps mlx-lm's own call. Floats differ from MLX's only by
summation order (tests/test_cpu_chain.py compares each family's chained layer with mlx-lm's).
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.cpu_linear import CpuLinear, SiblingLinear
from engine.streaming import StreamingSwitchGLU

HostFn = Any  # (T, D) float32 numpy -> (T, D) float32 numpy
SOFTMAX_TOPK, TOPK_SOFTMAX = "softmax_topk", "topk_softmax"  # route()'s two kinds


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """nn.RMSNorm in float32: x (T, D) * rsqrt(mean(x^2) + eps) * weight (D,)."""
    ms = np.einsum("td,td->t", x, x, dtype=np.float32)[:, None] / np.float32(x.shape[1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * weight


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.float32(1.0) / (np.float32(1.0) + np.exp(-z))


def route(kind: str, logits: np.ndarray, k: int, norm_topk: bool) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (T, E) -> (expert ids (T, k), their weights (T, k)) as the family does it:
    softmax_topk: softmax over all experts, top k, renormalized if the model says so (qwen3_moe,
    olmoe, qwen2_moe); topk_softmax: top k logits, softmax over those (mixtral)."""
    if kind == SOFTMAX_TOPK:
        probs = _softmax(logits)
        inds = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
        scores = np.take_along_axis(probs, inds, axis=-1)
        if norm_topk:
            scores = scores / scores.sum(axis=-1, keepdims=True)
        return inds, scores
    inds = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return inds, _softmax(np.take_along_axis(logits, inds, axis=-1))


def group_select(logits: np.ndarray, bias: np.ndarray, gate: Any) -> tuple[np.ndarray, np.ndarray]:
    """mlx-lm's deepseek_v3.group_expert_select in numpy; `gate` is the MoEGate (its top_k,
    n_group, topk_group, routed_scaling_factor, norm_topk_prob)."""
    orig = sigmoid(logits.astype(np.float32))
    scores = orig + bias
    t, n_group = scores.shape[0], int(gate.n_group)
    drop = n_group - int(gate.topk_group)  # groups zeroed out
    if n_group > 1 and drop > 0:
        grouped = scores.reshape(t, n_group, -1).copy()
        best2 = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)  # (T, n_group)
        low = np.argpartition(best2, drop - 1, axis=-1)[:, :drop]
        grouped[np.arange(t)[:, None], low, :] = 0.0  # put_along_axis(..., 0.0)
        scores = grouped.reshape(t, -1)
    k = int(gate.top_k)
    inds = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    w = np.take_along_axis(orig, inds, axis=-1)
    if k > 1 and gate.norm_topk_prob:
        w = w / w.sum(axis=-1, keepdims=True)
    return inds, w * np.float32(gate.routed_scaling_factor)


def _swiglu_mlp(mlp: nn.Module) -> HostFn | None:
    """down(silu(gate(x)) * up(x)) on the host, for an MLP whose three projections are on the
    CPU kernels (gate/up fused as siblings, or two CpuLinears)."""
    g, u, d = (mlp.get(n) for n in ("gate_proj", "up_proj", "down_proj"))
    if not isinstance(d, CpuLinear):
        return None
    if isinstance(g, SiblingLinear) and isinstance(u, SiblingLinear) and g._rows is u._rows:
        rows = g._rows
        b = rows.bounds
        gi, ui = g._index, u._index

        def gate_up(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y = rows.fused.host(x)
            return y[:, b[gi] : b[gi + 1]], y[:, b[ui] : b[ui + 1]]
    elif isinstance(g, CpuLinear) and isinstance(u, CpuLinear):

        def gate_up(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return g.host(x), u.host(x)
    else:
        return None

    def call(x: np.ndarray) -> np.ndarray:
        gv, uv = gate_up(x)
        return d.host(np.ascontiguousarray(gv * sigmoid(gv) * uv))

    return call


class _MoE:
    """A routed block: router logits -> (ids, weights) -> the experts' weighted sum (+ shared)."""

    def __init__(self, block: nn.Module, select: Any, shared: HostFn | None) -> None:
        self.experts: StreamingSwitchGLU = block["switch_mlp"]
        self.select = select  # (T, D) -> (ids (T, k), weights (T, k))
        self.shared = shared

    def __call__(self, h: np.ndarray) -> np.ndarray:
        inds, scores = self.select(h)
        k = inds.shape[1]
        y = self.experts.host_experts(h, inds.reshape(-1), k)  # (T*k, D)
        out = np.einsum("tkd,tk->td", y.reshape(h.shape[0], k, -1), scores.astype(np.float32))
        return out if self.shared is None else out + self.shared(h)


def _top_k(block: nn.Module) -> int:  # read at each call: experts_per_token may change it
    k = getattr(block, "top_k", None)
    return int(k if k is not None else block.num_experts_per_tok)


def _softmax_moe(block: nn.Module, kind: str) -> HostFn | None:
    gate = block.get("gate")
    if not isinstance(gate, CpuLinear):
        return None
    norm = bool(getattr(block, "norm_topk_prob", False))

    def select(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return route(kind, gate.host(h), _top_k(block), norm)

    shared = None
    if "shared_expert" in block:  # qwen2_moe: sigmoid(shared_expert_gate(x)) * shared(x)
        mlp, sgate = _swiglu_mlp(block["shared_expert"]), block.get("shared_expert_gate")
        if mlp is None or not isinstance(sgate, CpuLinear):
            return None

        def shared(h: np.ndarray) -> np.ndarray:
            return sigmoid(sgate.host(h)) * mlp(h)

    return _MoE(block, select, shared)


def _deepseek_moe(block: nn.Module) -> HostFn | None:
    gate = block.get("gate")
    weight = gate.get("weight") if isinstance(gate, nn.Module) else None
    if not isinstance(weight, mx.array) or weight.dtype != mx.float32:
        return None
    # A view of MLX's own buffer (float32 after the engine's cast): no second copy in RAM.
    w = np.asarray(weight)
    bias = np.array(gate["e_score_correction_bias"].astype(mx.float32))
    shared = None
    if "shared_experts" in block:
        shared = _swiglu_mlp(block["shared_experts"])
        if shared is None:
            return None

    def select(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return group_select(h @ w.T, bias, gate)

    return _MoE(block, select, shared)


# mlx-lm block class -> how its host twin is built (a None answer: keep mlx-lm's call).
BLOCKS: dict[tuple[str, str], Any] = {
    ("mlx_lm.models.qwen3_moe", "Qwen3MoeSparseMoeBlock"): lambda b: _softmax_moe(b, SOFTMAX_TOPK),
    ("mlx_lm.models.olmoe", "OlmoeSparseMoeBlock"): lambda b: _softmax_moe(b, SOFTMAX_TOPK),
    ("mlx_lm.models.qwen2_moe", "Qwen2MoeSparseMoeBlock"): lambda b: _softmax_moe(b, SOFTMAX_TOPK),
    ("mlx_lm.models.mixtral", "MixtralSparseMoeBlock"): lambda b: _softmax_moe(b, TOPK_SOFTMAX),
    ("mlx_lm.models.deepseek_v3", "DeepseekV3MoE"): _deepseek_moe,
    ("mlx_lm.models.deepseek_v3", "DeepseekV3MLP"): _swiglu_mlp,
    ("mlx_lm.models.qwen3_moe", "MLP"): _swiglu_mlp,
}


def host_block(block: nn.Module) -> HostFn | None:
    """The host twin of a decoder layer's feed-forward block, or None (not a known class, or a
    part not on the CPU kernels)."""
    make = BLOCKS.get((type(block).__module__, type(block).__name__))
    if make is None:
        return None
    experts = block.get("switch_mlp")
    if experts is not None and not (
        isinstance(experts, StreamingSwitchGLU) and experts._arena is not None
    ):
        return None  # experts not bound to the CPU kernels
    return make(block)
