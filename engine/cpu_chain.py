"""Host-chained decoder layers: one host sync per layer on the CPU compute path.

With every projection on the CPU kernels (engine.cpu_linear), a plain mlx-lm decoder layer
crosses between MLX and numpy four times (q/k/v, o_proj, router, experts), each crossing an
MLX evaluation. For families whose layer is the plain pre-norm form

    h = x + attn(rms_norm(x));  out = h + moe(rms_norm(h))

with a softmax top-k router, the layer runs here instead: MLX computes only the attention core
(mlx-lm's own module: q/k/v norms, RoPE, KV cache, SDPA) and everything from o_proj to the next
layer's q/k/v stays in numpy (norms, residuals, router, experts, weighted sum). The one sync is
o_proj reading the attention output. Other families, or layers that do not match (a dense MLP
layer, a shared expert), keep mlx-lm's own __call__.

The math mirrors mlx-lm's modules named in CHAINED (checked by tests/test_cpu_chain.py against
the unchained layer); floats differ from MLX's only by summation order.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.cpu_linear import HOST, CpuLinear, SiblingLinear
from engine.streaming import StreamingSwitchGLU

# decoder layer class -> (MoE block attribute, its class, routing): the layers whose __call__
# is the plain pre-norm form above, in mlx-lm's modules of these names.
CHAINED: dict[tuple[str, str], tuple[str, str, str]] = {
    ("mlx_lm.models.qwen3_moe", "Qwen3MoeDecoderLayer"): (
        "mlp",
        "Qwen3MoeSparseMoeBlock",
        "softmax_topk",
    ),
    ("mlx_lm.models.olmoe", "TransformerBlock"): ("mlp", "OlmoeSparseMoeBlock", "softmax_topk"),
    ("mlx_lm.models.mixtral", "MixtralDecoderLayer"): (
        "block_sparse_moe",
        "MixtralSparseMoeBlock",
        "topk_softmax",
    ),
}


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """nn.RMSNorm in float32: x (T, D) * rsqrt(mean(x^2) + eps) * weight (D,)."""
    ms = np.einsum("td,td->t", x, x, dtype=np.float32)[:, None] / np.float32(x.shape[1])
    return x * (np.float32(1.0) / np.sqrt(ms + np.float32(eps))) * weight


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def route(kind: str, logits: np.ndarray, k: int, norm_topk: bool) -> tuple[np.ndarray, np.ndarray]:
    """Router logits (T, E) -> (expert ids (T, k), their weights (T, k)) as the family does it:
    softmax_topk: softmax over all experts, top k, renormalized if the model says so (qwen3_moe,
    olmoe); topk_softmax: top k logits, softmax over those (mixtral)."""
    if kind == "softmax_topk":
        probs = _softmax(logits)
        inds = np.argpartition(-probs, k - 1, axis=-1)[:, :k]
        scores = np.take_along_axis(probs, inds, axis=-1)
        if norm_topk:
            scores = scores / scores.sum(axis=-1, keepdims=True)
        return inds, scores
    inds = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return inds, _softmax(np.take_along_axis(logits, inds, axis=-1))


class _Chain:
    """What a chained layer computes with, taken from its mlx-lm modules once."""

    def __init__(self, layer: nn.Module, moe_attr: str, routing: str) -> None:
        self.moe = layer[moe_attr]
        self.routing = routing
        self.gate: CpuLinear = self.moe["gate"]
        self.experts: StreamingSwitchGLU = self.moe["switch_mlp"]
        self.norms = []
        for name in ("input_layernorm", "post_attention_layernorm"):
            n = layer[name]
            self.norms.append((np.array(n.weight.astype(mx.float32)), float(n.eps)))

    def top_k(self) -> int:  # read at each call: experts_per_token may change it after load
        moe = self.moe
        k = getattr(moe, "top_k", None)
        return int(k if k is not None else moe.num_experts_per_tok)

    def moe_host(self, h: np.ndarray) -> np.ndarray:
        """(T, D) normed hidden -> (T, D) weighted sum of its experts' outputs."""
        k = self.top_k()
        inds, scores = route(
            self.routing, self.gate.host(h), k, bool(getattr(self.moe, "norm_topk_prob", False))
        )
        y = self.experts.host_experts(h, inds.reshape(-1), k)  # (T*k, D)
        return np.einsum("tkd,tk->td", y.reshape(h.shape[0], k, -1), scores.astype(np.float32))


def _chained_call(self: nn.Module, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    ch: _Chain = self._chain
    b, seq, d = x.shape
    xn = HOST.to_host(x).reshape(-1, d)  # from the previous chained layer: no sync
    (w_in, eps_in), (w_post, eps_post) = ch.norms
    a = HOST.from_host(rms_norm(xn, w_in, eps_in).reshape(b, seq, d))
    r = self.self_attn(a, mask, cache)  # mlx-lm's attention; its o_proj is the layer's sync
    h = xn + HOST.to_host(r).reshape(-1, d)
    out = h + ch.moe_host(rms_norm(h, w_post, eps_post))
    return HOST.from_host(out.reshape(b, seq, d))


_SUBCLASSES: dict[type, type] = {}


def _chained_class(cls: type) -> type:
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Chained{cls.__name__}", (cls,), {"__call__": _chained_call})
    return _SUBCLASSES[cls]


def _chainable(layer: nn.Module) -> tuple[str, str] | None:
    """(MoE attribute, routing) when this layer's math is what _chained_call computes."""
    spec = CHAINED.get((type(layer).__module__, type(layer).__name__))
    if spec is None:
        return None
    moe_attr, moe_cls, routing = spec
    moe = layer.get(moe_attr)
    attn = layer.get("self_attn")
    if moe is None or type(moe).__name__ != moe_cls or not isinstance(attn, nn.Module):
        return None  # e.g. qwen3_moe's dense (mlp_only) layers keep mlx-lm's call
    experts = moe.get("switch_mlp")
    norms = [layer.get(n) for n in ("input_layernorm", "post_attention_layernorm")]
    ok = (
        isinstance(moe.get("gate"), CpuLinear)
        and isinstance(experts, StreamingSwitchGLU)
        and experts._arena is not None
        and isinstance(attn.get("o_proj"), CpuLinear)
        and all(type(n) is nn.RMSNorm for n in norms)
        and all(isinstance(attn.get(p), CpuLinear | SiblingLinear) for p in ("q_proj", "k_proj"))
    )
    return (moe_attr, routing) if ok else None


def chain_layers(model: nn.Module) -> int:
    """Make every chainable decoder layer of `model` compute on the host between its syncs
    (in place, after its experts are bound to the CPU kernels). Returns how many were chained."""
    n = 0
    for _, layer in model.named_modules():
        spec = _chainable(layer)
        if spec is not None:
            layer._chain = _Chain(layer, *spec)
            layer.__class__ = _chained_class(type(layer))
            n += 1
    return n
