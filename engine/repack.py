"""Repacking (once per expert load): MLX-quantized bytes -> the kernels' layout.

engine/kernels.py describes the layouts (FMT_Q4: nibbles with the group index innermost;
FMT_Q8: bytes likewise) and computes with them; this file only moves bytes into them. It runs in
the reader threads (ExpertArena.prepare), so it must stay serial and GIL-free.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from engine.kernels import FMT_Q4, FMT_Q8, _up_nb


@njit(cache=True, nogil=True, error_model="numpy")
def _unpack_row(src: np.ndarray, bits: int, n: int, dst: np.ndarray) -> None:
    """MLX's packing: element i at bit bits*i of the little-endian bit stream."""
    mask = (1 << bits) - 1
    for i in range(n):
        p = bits * i
        b = p >> 3
        v = np.int32(src[b])
        if b + 1 < src.size:
            v |= np.int32(src[b + 1]) << 8
        dst[i] = (v >> (p & 7)) & mask


def half_to_f32(bits16: np.ndarray, dtype: str) -> np.ndarray:
    """16-bit floats stored as uint16 bits (bfloat16 or float16) -> float32 (exact)."""
    if dtype == "bfloat16":
        return (bits16.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return bits16.view(np.float16).astype(np.float32)
    return bits16.astype(np.float32)


@njit(cache=True, nogil=True, error_model="numpy")
def repack_quantized(
    w: np.ndarray,
    scales: np.ndarray,
    biases: np.ndarray,
    bits: int,
    fmt: int,
    o_dim: int,
    i_dim: int,
    gs: int,
    f: int,
    dst: np.ndarray,
) -> None:
    """One MLX-quantized matrix (packed uint8 (O*In*bits/8,), scales/biases (O*G,) float32)
    -> its FMT_Q4/FMT_Q8 kernel layout in dst: weights (O, steps/f, G*f) with lane g*f + r at
    step jj holding the group's element (pair, for Q4) jj*f + r."""
    g_n = i_dim // gs
    per = gs // 2 if fmt == FMT_Q4 else gs  # bytes of one group in the kernel layout
    steps, lanes = per // f, g_n * f
    row_bytes = i_dim * bits // 8
    q = np.empty(i_dim, np.int32)
    wbytes = o_dim * per * g_n
    wq = dst[:wbytes].reshape(o_dim, steps, lanes)
    woff = _up_nb(wbytes)
    sb = _up_nb(o_dim * g_n * 4)
    dst[woff : woff + o_dim * g_n * 4].view(np.float32)[:] = scales
    dst[woff + sb : woff + sb + o_dim * g_n * 4].view(np.float32)[:] = biases
    if (bits == 4 and fmt == FMT_Q4) or (bits == 8 and fmt == FMT_Q8):
        # The stored bytes already pair elements as the layout does: only their order changes.
        _swap_groups(w[: o_dim * row_bytes], dst[:wbytes], o_dim, g_n, steps, f)
        return
    for o in range(o_dim):
        _unpack_row(w[o * row_bytes : (o + 1) * row_bytes], bits, i_dim, q)
        for g in range(g_n):
            for jj in range(steps):
                for r in range(f):
                    k = g * per + jj * f + r  # byte of the group in natural order
                    if fmt == FMT_Q4:
                        wq[o, jj, g * f + r] = np.uint8(q[2 * k] | (q[2 * k + 1] << 4))
                    else:
                        wq[o, jj, g * f + r] = np.uint8(q[k])


@njit(cache=True, nogil=True, error_model="numpy")
def _swap_groups(
    src: np.ndarray, dst: np.ndarray, o_dim: int, g_n: int, steps: int, f: int
) -> None:
    """Row o of src is g_n groups of `steps` f-byte blocks; dst row o takes them step-major:
    dst[o, jj, g] = src[o, g, jj] (a block: the f bytes that the kernel's f lanes of group g
    read at step jj). Blocks move as one integer when f <= 8 (a byte-wise permutation was
    3-6x slower, and a cache miss waits on this). Serial: reader threads and the caller share
    the cores."""
    if f == 1:
        _swap(src.reshape(o_dim, g_n, steps), dst.reshape(o_dim, steps, g_n))
    elif f == 2:
        s16, d16 = src.view(np.uint16), dst.view(np.uint16)
        _swap(s16.reshape(o_dim, g_n, steps), d16.reshape(o_dim, steps, g_n))
    elif f == 4:
        s32, d32 = src.view(np.uint32), dst.view(np.uint32)
        _swap(s32.reshape(o_dim, g_n, steps), d32.reshape(o_dim, steps, g_n))
    else:  # 8-byte words, f // 8 of them per block
        m = f // 8
        s64, d64 = src.view(np.uint64), dst.view(np.uint64)
        _swap_blocks(s64.reshape(o_dim, g_n, steps, m), d64.reshape(o_dim, steps, g_n, m))


@njit(cache=True, nogil=True, error_model="numpy")
def _swap(src: np.ndarray, dst: np.ndarray) -> None:
    """dst[o, j, g] = src[o, g, j]: the inner loop writes dst contiguously (the vectorizer
    takes that loop; a 4-d version with a unit inner axis ran 3x slower)."""
    o_dim, g_n, steps = src.shape
    for o in range(o_dim):
        for j in range(steps):
            for g in range(g_n):
                dst[o, j, g] = src[o, g, j]


@njit(cache=True, nogil=True, error_model="numpy")
def _swap_blocks(src: np.ndarray, dst: np.ndarray) -> None:
    o_dim, g_n, steps, m = src.shape
    for o in range(o_dim):
        for j in range(steps):
            for g in range(g_n):
                for r in range(m):
                    dst[o, j, g, r] = src[o, g, j, r]
