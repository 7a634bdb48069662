"""Host-chained decoder layers: one host sync per layer on the CPU compute path.

With every projection on the CPU kernels (engine.cpu_linear), a plain mlx-lm decoder layer
crosses between MLX and numpy four or more times (q/k/v, o_proj, router, experts, a shared
expert's down projection), each crossing an MLX evaluation. For families whose layer is the
plain pre-norm form

    h = x + attn(rms_norm(x));  out = h + ffn(rms_norm(h))

the layer runs here instead: MLX computes only the attention core (mlx-lm's own module: q/k/v
norms, RoPE, KV cache, SDPA) and everything from o_proj to the next layer's q/k/v stays in
numpy (norms, residuals, and the feed-forward block: engine.host_moe). The one sync is o_proj
reading the attention output. Inside the attention, an RMSNorm between two projections (MLA's
q_a_layernorm) also runs on the host, so DeepSeek-V3's attention has that one sync too. A
decode step (one token) of the attention classes engine.host_attention mirrors runs on the
host as well: then the layer makes no MLX call and no sync at all. Layers of other classes,
or whose parts are not all on the CPU kernels, keep mlx-lm's call.

The math mirrors mlx-lm's modules named in CHAINED and engine.host_moe.BLOCKS (checked by
tests/test_cpu_chain.py against the unchained layer); floats differ only by summation order.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import KVCache

from engine.cpu_linear import HOST, CpuLinear
from engine.host_attention import flush, host_attention
from engine.host_moe import HostFn, host_block, rms_norm

# decoder layer class -> the attribute of its feed-forward block, in mlx-lm's modules of these
# names: the layers whose __call__ is the plain pre-norm form above.
CHAINED: dict[tuple[str, str], str] = {
    ("mlx_lm.models.qwen3_moe", "Qwen3MoeDecoderLayer"): "mlp",
    ("mlx_lm.models.olmoe", "TransformerBlock"): "mlp",
    ("mlx_lm.models.mixtral", "MixtralDecoderLayer"): "block_sparse_moe",
    ("mlx_lm.models.qwen2_moe", "Qwen2MoeDecoderLayer"): "mlp",
    ("mlx_lm.models.deepseek_v3", "DeepseekV3DecoderLayer"): "mlp",
}


def _norm_of(n: nn.Module) -> tuple[np.ndarray, float]:
    return np.array(n.weight.astype(mx.float32)), float(n.eps)


class _Chain:
    """What a chained layer computes with, taken from its mlx-lm modules once."""

    def __init__(self, layer: nn.Module, ffn: HostFn) -> None:
        self.ffn = ffn
        self.norms = [_norm_of(layer[n]) for n in ("input_layernorm", "post_attention_layernorm")]
        self.attn = host_attention(layer["self_attn"])  # a decode step's attention, or None


def _chained_call(self: nn.Module, x: mx.array, mask: Any = None, cache: Any = None) -> mx.array:
    ch: _Chain = self._chain
    b, seq, d = x.shape
    xn = HOST.to_host(x).reshape(-1, d)  # from the previous chained layer: no sync
    (w_in, eps_in), (w_post, eps_post) = ch.norms
    an = rms_norm(xn, w_in, eps_in)
    if ch.attn is not None and b * seq == 1 and type(cache) is KVCache and cache.keys is not None:
        h = xn + ch.attn(an, cache)  # a decode step: no MLX call, no sync
    else:
        if cache is not None:
            flush(cache)  # positions the host appended, before MLX attends over them
        r = self.self_attn(HOST.from_host(an.reshape(b, seq, d)), mask, cache)
        h = xn + HOST.to_host(r).reshape(-1, d)  # its o_proj is the layer's sync
    out = h + ch.ffn(rms_norm(h, w_post, eps_post))
    return HOST.from_host(out.reshape(b, seq, d))


def _host_norm_call(self: nn.Module, x: mx.array) -> mx.array:
    """RMSNorm on the host when x is a host result (a projection's output), else MLX's own."""
    xn = HOST.known(x)
    if xn is None:
        return nn.RMSNorm.__call__(self, x)
    w, eps = self._host_norm
    d = xn.shape[-1]
    return HOST.from_host(rms_norm(xn.reshape(-1, d), w, eps).reshape(xn.shape))


_SUBCLASSES: dict[tuple[type, str], type] = {}


def _subclass(cls: type, call: Any, tag: str) -> type:
    key = (cls, tag)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"{tag}{cls.__name__}", (cls,), {"__call__": call})
    return _SUBCLASSES[key]


def _chainable(layer: nn.Module) -> HostFn | None:
    """The layer's host feed-forward when its math is what _chained_call computes."""
    attr = CHAINED.get((type(layer).__module__, type(layer).__name__))
    if attr is None:
        return None
    attn, ffn = layer.get("self_attn"), layer.get(attr)
    norms = [layer.get(n) for n in ("input_layernorm", "post_attention_layernorm")]
    if not (isinstance(attn, nn.Module) and isinstance(ffn, nn.Module)):
        return None
    if not isinstance(attn.get("o_proj"), CpuLinear) or any(
        type(n) is not nn.RMSNorm for n in norms
    ):
        return None
    # Every projection of the attention on the CPU kernels: its input is a host array, free.
    if any(isinstance(m, nn.Linear | nn.QuantizedLinear) for _, m in attn.named_modules()):
        return None
    return host_block(ffn)


def chain_layers(model: nn.Module) -> tuple[int, int]:
    """Make every chainable decoder layer of `model` compute on the host between its syncs
    (in place, after its experts are bound to the CPU kernels). Returns how many were chained,
    and of those how many run a decode step's attention on the host too (no sync at all)."""
    n = attn = 0
    for _, layer in model.named_modules():
        ffn = _chainable(layer)
        if ffn is None:
            continue
        layer._chain = _Chain(layer, ffn)
        attn += layer._chain.attn is not None
        layer.__class__ = _subclass(type(layer), _chained_call, "Chained")
        for _, m in layer["self_attn"].named_modules():
            if type(m) is nn.RMSNorm:  # e.g. MLA's q_a_layernorm, between two projections
                # object.__setattr__: nn.Module would file a tuple among its parameters
                object.__setattr__(m, "_host_norm", _norm_of(m))
                m.__class__ = _subclass(nn.RMSNorm, _host_norm_call, "Host")
        n += 1
    return n, attn
