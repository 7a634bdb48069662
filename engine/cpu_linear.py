"""CpuLinear: mlx-lm's dense Linear / QuantizedLinear layers computed by the engine's CPU kernels.

MLX's CPU matmul runs on a reference BLAS (~5 GB/s for a decode GEMV here), so on CPU every
dense projection (attention, routers, shared experts, lm_head) is swapped for a module that
keeps the weights in a kernel layout (16-bit as stored, quantized repacked) and computes with
`engine.kernels.linear`. The module boundary is the sync: MLX evaluates x, numpy reads it in
place, the result goes back as a new MLX array. Everything else stays mlx-lm's.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_unflatten

from engine import kernels as K
from engine.repack import repack_quantized


def _bits16(a: mx.array) -> np.ndarray:
    return np.array(a.view(mx.uint16))


class CpuLinear(nn.Module):
    """Same call as the layer it replaces: (..., In) -> (..., Out), float32 out."""

    def __init__(self, buf: np.ndarray, table: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        # Plain (non-MLX) attributes, so the module has no parameters for MLX to load or cast.
        self._buf, self._m, self._bias = buf, table[0], bias
        self._in, self._out = int(table[0, K.M_IN]), int(table[0, K.M_O])

    @property
    def input_dims(self) -> int:
        return self._in

    @property
    def output_dims(self) -> int:
        return self._out

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes + (self._bias.nbytes if self._bias is not None else 0))

    def __call__(self, x: mx.array) -> mx.array:
        *lead, d = x.shape
        if x.dtype != mx.float32:
            x = x.astype(mx.float32)
        xn = np.ascontiguousarray(np.asarray(x).reshape(-1, d))  # (T, In): MLX evaluates x here
        out = np.empty((xn.shape[0], self._out), np.float32)
        K.linear(self._buf, self._m, xn, out)
        if self._bias is not None:
            out += self._bias
        return mx.array(out).reshape(*lead, self._out)

    @classmethod
    def from_linear(cls, layer: nn.Module) -> CpuLinear | None:
        """The CPU twin of an nn.Linear or affine nn.QuantizedLinear; None for anything else."""
        bias = layer.get("bias") if "bias" in layer else None
        bias_np = np.array(bias.astype(mx.float32)) if bias is not None else None
        w = layer["weight"]
        if type(layer) is nn.QuantizedLinear:
            if getattr(layer, "mode", "affine") != "affine" or layer.bits > 8:
                return None
            o_dim, i_dim = w.shape[0], w.shape[1] * 32 // layer.bits
            fmt, gs = K.matrix_format(layer.bits, ""), layer.group_size
            table, nbytes = K.layout_table([(fmt, o_dim, i_dim, gs)])
            buf = np.zeros(nbytes, np.uint8)
            scales = np.array(layer["scales"].astype(mx.float32)).ravel()
            biases = np.array(layer["biases"].astype(mx.float32)).ravel()
            packed = np.array(w).view(np.uint8).ravel()
            repack_quantized(
                packed, scales, biases, layer.bits, fmt, o_dim, i_dim, gs, int(table[0, K.M_F]), buf
            )
            return cls(buf, table, bias_np)
        if type(layer) is not nn.Linear:
            return None
        o_dim, i_dim = w.shape
        if w.dtype == mx.bfloat16:
            table, nbytes = K.layout_table([(K.FMT_BF16, o_dim, i_dim, 0)])
            buf = np.zeros(nbytes, np.uint8)
            buf[: w.size * 2] = _bits16(w).view(np.uint8).ravel()
        else:  # float16/float32 -> float32 (exact)
            table, nbytes = K.layout_table([(K.FMT_F32, o_dim, i_dim, 0)])
            buf = np.zeros(nbytes, np.uint8)
            buf[: w.size * 4] = np.array(w.astype(mx.float32)).view(np.uint8).ravel()
        return cls(buf, table, bias_np)


def use_cpu_linears(model: nn.Module) -> int:
    """Swap every dense Linear/QuantizedLinear of `model` for a CpuLinear, in place, before the
    model is cast (so 16-bit weights stay 16-bit). Returns the bytes the swapped layers hold."""
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Linear | nn.QuantizedLinear)]
    held = 0
    for path in paths:  # one at a time: the MLX copy is freed before the next is repacked
        twin = CpuLinear.from_linear(_module_at(model, path))
        model.update_modules(tree_unflatten([(path, twin)]))
        held += twin.nbytes
    return held


def _module_at(model: nn.Module, path: str) -> Any:
    mod: Any = model
    for part in path.split("."):
        mod = mod[int(part)] if isinstance(mod, list) else getattr(mod, part)
    return mod


class WidenedEmbedding(nn.Module):
    """nn.Embedding whose table stays 16-bit (half the RAM of the float32 the rest computes in);
    looked-up rows are widened to float32 exactly, so outputs equal the float32 model's."""

    def __init__(self, weight: mx.array) -> None:
        super().__init__()
        self._w = weight  # plain attribute: not a parameter, so the float32 cast skips it

    def __call__(self, x: mx.array) -> mx.array:
        return self._w[x].astype(mx.float32)

    def as_linear(self, x: mx.array) -> mx.array:
        """Tied lm_head (x @ table.T), computed in float32 like the reference."""
        return x.astype(mx.float32) @ self._w.T.astype(mx.float32)


def keep_embeddings_16bit(model: nn.Module) -> int:
    """Swap every 16-bit nn.Embedding for a WidenedEmbedding, in place, before the cast.
    Returns the bytes the tables hold."""
    swaps = [
        (path, WidenedEmbedding(mod.weight))
        for path, mod in model.named_modules()
        if type(mod) is nn.Embedding and mod.weight.dtype in (mx.bfloat16, mx.float16)
    ]
    if swaps:
        model.update_modules(tree_unflatten(swaps))
    return sum(int(e._w.nbytes) for _, e in swaps)
