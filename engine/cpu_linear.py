"""CpuLinear: mlx-lm's dense Linear / QuantizedLinear layers computed by the engine's CPU kernels.

MLX's CPU matmul runs on a reference BLAS (~5 GB/s for a decode GEMV here), so on CPU every
dense projection (attention, routers, shared experts, lm_head) is swapped for a module that
keeps the weights in a kernel layout (16-bit as stored, quantized repacked) and computes with
`engine.kernels.linear`. The module boundary is the sync: MLX evaluates x, numpy reads it in
place, the result goes back as a new MLX array. Everything else stays mlx-lm's.

Every MLX -> numpy crossing goes through `to_host`, which counts the host syncs (`HOST.syncs`);
arrays made from numpy by `from_host` are remembered, so reading one back costs no sync.
Sibling projections called on one input (q/k/v; a shared expert's gate/up) are fused at load
into one matrix: the first call computes all of them, the others take their share.
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


class HostBridge:
    """MLX <-> numpy crossings of the CPU path. `syncs` counts the conversions of arrays MLX
    computed (each one waits for MLX's graph: a host sync); arrays this bridge made from numpy
    (or already converted) are served back from `recent` without a conversion."""

    KEEP = 8  # pairs remembered: a layer hands over a few; the oldest go first
    KEEP_BYTES = 2 << 20  # a prompt's hidden states, not its logits (they would stay alive here)

    def __init__(self) -> None:
        self.syncs = 0
        self.recent: dict[int, tuple[mx.array, np.ndarray]] = {}

    def _remember(self, a: mx.array, n: np.ndarray) -> None:
        if n.nbytes > self.KEEP_BYTES:
            return
        self.recent[id(a)] = (a, n)  # the strong ref keeps id(a) from being reused
        while len(self.recent) > self.KEEP:
            del self.recent[next(iter(self.recent))]

    def known(self, x: mx.array) -> np.ndarray | None:
        """x's numpy twin when this bridge made or converted it (no sync), else None."""
        hit = self.recent.get(id(x))
        return hit[1] if hit is not None and hit[0] is x else None

    def to_host(self, x: mx.array, dtype: mx.Dtype | None = mx.float32) -> np.ndarray:
        """x as a C-contiguous numpy array of the same shape (read-only view or copy), cast to
        `dtype` unless None."""
        n = self.known(x)
        if n is not None:
            return n  # float32, as x is: only those are remembered
        self.syncs += 1
        xf = x if dtype is None or x.dtype == dtype else x.astype(dtype)
        n = np.ascontiguousarray(np.asarray(xf))  # MLX evaluates x here
        if x.dtype == mx.float32 and n.dtype == np.float32:
            self._remember(x, n)
        return n

    def from_host(self, n: np.ndarray) -> mx.array:
        a = mx.array(n)
        if n.dtype == np.float32:
            self._remember(a, n)
        return a


HOST = HostBridge()  # one per process: the model runs on one thread


class _Dims:
    """nn.Linear's input_dims/output_dims, which mlx-lm code reads off a projection."""

    _in: int
    _out: int

    @property
    def input_dims(self) -> int:
        return self._in

    @property
    def output_dims(self) -> int:
        return self._out


class CpuLinear(_Dims, nn.Module):
    """Same call as the layer it replaces: (..., In) -> (..., Out), float32 out."""

    def __init__(self, buf: np.ndarray, table: np.ndarray, bias: np.ndarray | None) -> None:
        super().__init__()
        # Plain (non-MLX) attributes, so the module has no parameters for MLX to load or cast.
        self._buf, self._m, self._bias = buf, table[0], bias
        self._in, self._out = int(table[0, K.M_IN]), int(table[0, K.M_O])

    @property
    def nbytes(self) -> int:
        return int(self._buf.nbytes + (self._bias.nbytes if self._bias is not None else 0))

    def __call__(self, x: mx.array) -> mx.array:
        *lead, d = x.shape
        out = self.host(HOST.to_host(x).reshape(-1, d))
        return HOST.from_host(out.reshape(*lead, self._out))

    def host(self, xn: np.ndarray) -> np.ndarray:
        """(T, In) float32 numpy -> (T, Out) float32 numpy, no MLX involved."""
        out = np.empty((xn.shape[0], self._out), np.float32)
        fn = K.linear_serial if self._buf.nbytes * xn.shape[0] < K.SERIAL_BYTES else K.linear
        fn(self._buf, self._m, xn, out)
        if self._bias is not None:
            out += self._bias
        return out

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


# Sibling projections mlx-lm calls on one input, by name; fused when their layouts agree.
SIBLINGS = (
    ("q_proj", "k_proj", "v_proj"),
    ("gate_proj", "up_proj"),
    ("q_a_proj", "kv_a_proj_with_mqa"),
)


class FusedRows:
    """One CpuLinear over the stacked rows of sibling projections: a call for one input
    computes every sibling in one kernel call; the siblings' later calls with the same input
    take their columns (mx arrays are immutable, so the same object means the same values)."""

    def __init__(self, fused: CpuLinear, widths: list[int]) -> None:
        self.fused = fused
        self.bounds = np.cumsum([0, *widths]).tolist()
        self._x: mx.array | None = None  # last input (held, so its id is not reused)
        self._outs: list[mx.array] = []

    def output(self, x: mx.array, index: int) -> mx.array:
        if x is not self._x:
            *lead, d = x.shape
            y = self.fused.host(HOST.to_host(x).reshape(-1, d))  # (T, sum of widths)
            b = self.bounds
            self._outs = [
                HOST.from_host(np.ascontiguousarray(y[:, b[i] : b[i + 1]]).reshape(*lead, -1))
                for i in range(len(b) - 1)
            ]
            self._x = x
        return self._outs[index]


class SiblingLinear(_Dims, nn.Module):
    """A projection whose rows live in a FusedRows; same call as the layer it replaces."""

    def __init__(self, rows: FusedRows, index: int) -> None:
        super().__init__()
        self._rows, self._index = rows, index
        self._in = rows.fused.input_dims
        self._out = rows.bounds[index + 1] - rows.bounds[index]
        # the first sibling carries the fused buffer's bytes, so a sum counts them once
        self.nbytes = rows.fused.nbytes if index == 0 else 0

    def __call__(self, x: mx.array) -> mx.array:
        return self._rows.output(x, self._index)


def _stacked(layers: list[nn.Module]) -> nn.Module | None:
    """One layer whose rows are `layers`' rows in order, or None when they cannot stack
    (different kinds, input widths, dtypes, quantization or bias presence)."""
    first = layers[0]
    kind = type(first)
    if kind not in (nn.Linear, nn.QuantizedLinear) or any(type(m) is not kind for m in layers):
        return None
    w0 = first["weight"]
    has_bias = "bias" in first
    for m in layers:
        w = m["weight"]
        if w.shape[1] != w0.shape[1] or w.dtype != w0.dtype or ("bias" in m) != has_bias:
            return None
        if kind is nn.QuantizedLinear and (
            (m.bits, m.group_size, getattr(m, "mode", "affine"))
            != (first.bits, first.group_size, getattr(first, "mode", "affine"))
        ):
            return None
    parts = ["weight", "bias"] if has_bias else ["weight"]
    if kind is nn.QuantizedLinear:
        parts += ["scales", "biases"]
    stacked = kind.__new__(kind)
    nn.Module.__init__(stacked)
    for attr in ("bits", "group_size", "mode"):
        if hasattr(first, attr):
            setattr(stacked, attr, getattr(first, attr))
    for part in parts:
        stacked[part] = mx.concatenate([m[part] for m in layers], axis=0)
    return stacked


def _fuse_siblings(model: nn.Module) -> int:
    """Swap each group of sibling projections for SiblingLinears over one fused CpuLinear, a
    group at a time (the MLX copies go before the next group is stacked); returns the bytes."""
    groups = [
        (path, names)
        for path, mod in model.named_modules()
        for names in SIBLINGS
        if isinstance(mod, dict)
        and all(isinstance(mod.get(n), nn.Linear | nn.QuantizedLinear) for n in names)
    ]
    held = 0
    for path, names in groups:
        mod = _module_at(model, path)
        layers = [mod[n] for n in names]
        stacked = _stacked(layers)
        fused = CpuLinear.from_linear(stacked) if stacked is not None else None
        if fused is None:
            continue
        rows = FusedRows(fused, [int(m["weight"].shape[0]) for m in layers])
        prefix = f"{path}." if path else ""
        swaps = [(f"{prefix}{n}", SiblingLinear(rows, i)) for i, n in enumerate(names)]
        del layers, stacked
        model.update_modules(tree_unflatten(swaps))
        held += sum(int(t.nbytes) for _, t in swaps)
    return held


def use_cpu_linears(model: nn.Module) -> int:
    """Swap every dense Linear/QuantizedLinear of `model` for a CpuLinear (siblings for one
    fused CpuLinear), in place, before the model is cast (so 16-bit weights stay 16-bit).
    Returns the bytes the swapped layers hold."""
    held = _fuse_siblings(model)
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Linear | nn.QuantizedLinear)]
    for path in paths:  # one at a time: the MLX copy is freed before the next is repacked
        twin = CpuLinear.from_linear(_module_at(model, path))
        model.update_modules(tree_unflatten([(path, twin)]))
        held += int(twin.nbytes)
    return held


def _module_at(model: nn.Module, path: str) -> Any:
    mod: Any = model
    for part in path.split(".") if path else []:  # "": the model itself
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
