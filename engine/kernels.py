"""CPU compute kernels (numba): quantized and 16-bit matrix-vector products near the RAM limit.

MLX's CPU backend links a reference BLAS and its `quantized_matmul` is compute-bound on x86
(see docs/architecture.md, "compute path"), so on CPU the engine computes every weight matrix
here instead: one JIT-compiled, vectorized, multi-threaded kernel per job, working on weights in
a *kernel layout* made once when an expert enters the cache (engine/repack.py).

Kernel layouts of one (O, In) matrix, each a flat byte run inside an expert's slot:
- FMT_Q4: weights 0..15 as nibbles, shape (O, HG, G) bytes with HG = gs/2, G = In/gs: byte
  [o, j, g] holds elements 2(g*HG+j) (low nibble) and 2(g*HG+j)+1 (high nibble) of row o. The
  group index is innermost so a row's dot product vectorizes across groups (G lanes) with one
  horizontal sum per row instead of one per group. Then scales and biases, (O, G) float32.
  2-, 3- and 4-bit stores use it (their values fit a nibble).
- FMT_Q8: weights 0..255 as bytes, (O, gs, G) with the same group-innermost order, then scales
  and biases (O, G) float32.
- FMT_BF16: (O, In) bfloat16 bits as stored (uint16); widened to float32 in registers.
- FMT_F32: (O, In) float32.
Affine dequantization is MLX's: w = scale * q + bias per group of `gs` inputs along a row, so
y[o] = sum_g scale[o,g] * sum_{i in g} q[o,i] x[i] + bias[o,g] * sum_{i in g} x[i].

Results equal MLX's up to float32 summation order (tests hold them to top-1 agreement and KL).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

FMT_Q4, FMT_Q8, FMT_BF16, FMT_F32 = 0, 1, 2, 3
FORMAT_NAMES = {FMT_Q4: "q4", FMT_Q8: "q8", FMT_BF16: "bf16", FMT_F32: "f32"}
# Fields of one matrix descriptor (a row of an int64 table handed to the kernels).
M_FMT, M_O, M_IN, M_GS, M_OFF, M_F = range(6)
ALIGN = 64  # each matrix part starts on a cache line


def matrix_format(bits: int, dtype: str) -> int:
    """The kernel layout for a store's matrices: quantized by bits, 16-bit by dtype."""
    if bits <= 4:
        return FMT_Q4
    if bits <= 8:
        return FMT_Q8
    return FMT_BF16 if dtype == "bfloat16" else FMT_F32


def _up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def matrix_bytes(fmt: int, o: int, i: int, gs: int) -> int:
    """Bytes of one matrix in its kernel layout (weights, then scales and biases if any)."""
    if fmt == FMT_Q4:
        return _up(o * i // 2) + 2 * _up(o * (i // gs) * 4)
    if fmt == FMT_Q8:
        return _up(o * i) + 2 * _up(o * (i // gs) * 4)
    if fmt == FMT_BF16:
        return _up(o * i * 2)
    return _up(o * i * 4)


LANES = 16  # float32 lanes of a 512-bit vector: what a row's partial sums should fill


def lane_factor(fmt: int, i_dim: int, gs: int) -> int:
    """Split each group over f lanes when a row has fewer than LANES groups (e.g. a 512-wide
    down_proj at group size 64 has 8), so the vector stays full; f divides the group's steps."""
    if fmt not in (FMT_Q4, FMT_Q8):
        return 1
    g_n, steps = i_dim // gs, (gs // 2 if fmt == FMT_Q4 else gs)
    f = 1
    while g_n * f < LANES and steps % (2 * f) == 0:
        f *= 2
    return f


def layout_table(mats: list[tuple[int, int, int, int]], base: int = 0) -> tuple[np.ndarray, int]:
    """[(fmt, O, In, gs)] -> (int64 table (n, 5) with offsets, total bytes)."""
    table = np.zeros((len(mats), 6), np.int64)
    off = base
    for r, (fmt, o, i, gs) in enumerate(mats):
        table[r] = (fmt, o, i, gs, off, lane_factor(fmt, i, gs))
        off += matrix_bytes(fmt, o, i, gs)
    return table, off - base


@intrinsic
def _bits_to_f32(typingctx, u):  # type: ignore[no-untyped-def]
    """Reinterpret the low 32 bits of an integer as float32 (bfloat16 widened: bits << 16);
    LLVM vectorizes it."""
    if not isinstance(u, types.Integer):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        v = args[0]
        if u.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif u.bitwidth < 32:
            v = builder.zext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _prefetch(typingctx, w, o, off):  # type: ignore[no-untyped-def]
    """Hint the cache line at byte `off` after w[o, 0, 0] (w: C-contiguous uint8 3-D) into the
    cache. The hardware prefetcher stops at each 4 KiB page and one pass of R rows reads about
    one page, so without this every pass began with misses to RAM: a decode layer's 8 experts
    (4-bit) took ~700 us from RAM against ~400 us with their weights in cache."""
    if not isinstance(w, types.Array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        base = cgutils.get_item_pointer(
            context, builder, aryty, ary, [args[1], zero, zero], wraparound=False
        )
        ptr = builder.gep(base, [args[2]])
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(w, o, off), codegen


@njit(cache=True, inline="always")
def _up_nb(n: int) -> int:
    return (n + 63) // 64 * 64


# ---- products --------------------------------------------------------------------------------


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True, inline="always")
def _rows(buf: np.ndarray, m: np.ndarray, x: np.ndarray, r0: int, r1: int, out: np.ndarray):
    """out[o - r0] = (W x)[o] for rows r0..r1 of the matrix described by m (one table row)."""
    fmt, o_dim, i_dim, gs, off = m[M_FMT], m[M_O], m[M_IN], m[M_GS], m[M_OFF]
    if fmt in (FMT_Q4, FMT_Q8):
        _rows_quant(buf, fmt, o_dim, i_dim, gs, off, m[M_F], x, r0, r1, out)
    elif fmt == FMT_BF16:
        w16 = buf[off : off + o_dim * i_dim * 2].view(np.uint16).reshape(o_dim, i_dim)
        for o in range(r0, r1):
            acc = np.float32(0.0)
            for i in range(i_dim):
                acc += _bits_to_f32(np.uint32(w16[o, i]) << np.uint32(16)) * x[i]
            out[o - r0] = acc
    else:
        w32 = buf[off : off + o_dim * i_dim * 4].view(np.float32).reshape(o_dim, i_dim)
        for o in range(r0, r1):
            acc = np.float32(0.0)
            for i in range(i_dim):
                acc += w32[o, i] * x[i]
            out[o - r0] = acc


# Rows per pass: independent accumulator chains that share each load of x. A row's partial sums
# live in memory (p), so each step waits on a store->load round trip; 8 chains in flight hide it
# (4-bit GEMV on one core, 512x1024: 4 rows 12.9 GB/s, 8 rows 18.9; 12 or more rows and LLVM
# stops vectorizing: 2 GB/s). Per row the arithmetic is the same, so results do not change.
R = 8


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True, inline="always")
def _rows_quant(buf, fmt, o_dim, i_dim, gs, off, f, x, r0, r1, out):  # type: ignore[no-untyped-def]
    g_n = i_dim // gs
    per = gs // 2 if fmt == FMT_Q4 else gs
    steps, lanes = per // f, g_n * f
    wbytes = o_dim * per * g_n
    woff = off + _up_nb(wbytes)
    sb = _up_nb(o_dim * g_n * 4)
    w = buf[off : off + wbytes].reshape(o_dim, steps, lanes)
    sc = buf[woff : woff + o_dim * g_n * 4].view(np.float32).reshape(o_dim, g_n)
    bi = buf[woff + sb : woff + sb + o_dim * g_n * 4].view(np.float32).reshape(o_dim, g_n)
    # x in the kernel layout's order (lane g*f + r, step jj), and each group's sum for biases
    xs = np.zeros(g_n, np.float32)
    xa = np.empty((steps, lanes), np.float32)
    xb = np.empty((steps, lanes), np.float32)
    for g in range(g_n):
        for jj in range(steps):
            for r in range(f):
                k = g * per + jj * f + r
                if fmt == FMT_Q4:
                    a, b = x[2 * k], x[2 * k + 1]
                    xa[jj, g * f + r] = a
                    xb[jj, g * f + r] = b
                    xs[g] += a + b
                else:
                    xa[jj, g * f + r] = x[k]
                    xs[g] += x[k]
    p = np.empty((R, lanes), np.float32)
    o = r0
    while o < r1:
        n = min(R, r1 - o)
        if fmt == FMT_Q4:
            _q4_pass(w, xa, xb, o, n, p)
        else:
            _q8_pass(w, xa, o, n, p)
        for r in range(n):
            acc = np.float32(0.0)
            if f == 1:  # the common case, kept a plain loop so it vectorizes
                for g in range(g_n):
                    acc += p[r, g] * sc[o + r, g] + bi[o + r, g] * xs[g]
            else:
                for g in range(g_n):
                    part = np.float32(0.0)
                    for ln in range(g * f, g * f + f):
                        part += p[r, ln]
                    acc += part * sc[o + r, g] + bi[o + r, g] * xs[g]
            out[o + r - r0] = acc
        o += n


def _nibble_codegen(shift: int):  # type: ignore[no-untyped-def]
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        i32 = ir.IntType(32)
        v = builder.zext(args[0], i32)
        v = builder.lshr(v, ir.Constant(i32, shift)) if shift else v
        v = builder.and_(v, ir.Constant(i32, 15))
        return builder.uitofp(v, ir.FloatType())

    return codegen


# A byte's low / high nibble as float32, in 32-bit integer lanes: numba's own `v & 15` widens
# to int64, which halves the vector width of the 4-bit kernel.
@intrinsic
def _lo(typingctx, v):  # type: ignore[no-untyped-def]
    return types.float32(types.uint8), _nibble_codegen(0)


@intrinsic
def _hi(typingctx, v):  # type: ignore[no-untyped-def]
    return types.float32(types.uint8), _nibble_codegen(4)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _q4_pass(w, xa, xb, o, n, p):  # type: ignore[no-untyped-def]
    """p[r, lane] = partial dot of row o+r, r < n; R rows at once share each load of x."""
    o_all, steps, lanes = w.shape
    p[:] = 0.0
    if o + 2 * R <= o_all:  # the next pass's rows come from RAM while this one computes
        for off in range(0, R * steps * lanes, 64):
            _prefetch(w, o + R, off)
    if n == R:  # written out row by row: a loop over r here is not vectorized
        for jj in range(steps):
            for ln in range(lanes):
                e, d = xa[jj, ln], xb[jj, ln]
                v = w[o, jj, ln]
                p[0, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 1, jj, ln]
                p[1, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 2, jj, ln]
                p[2, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 3, jj, ln]
                p[3, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 4, jj, ln]
                p[4, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 5, jj, ln]
                p[5, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 6, jj, ln]
                p[6, ln] += _lo(v) * e + _hi(v) * d
                v = w[o + 7, jj, ln]
                p[7, ln] += _lo(v) * e + _hi(v) * d
    else:  # the last rows when O is not a multiple of R
        for r in range(n):
            for jj in range(steps):
                for ln in range(lanes):
                    v = w[o + r, jj, ln]
                    p[r, ln] += _lo(v) * xa[jj, ln] + _hi(v) * xb[jj, ln]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _q8_pass(w, xa, o, n, p):  # type: ignore[no-untyped-def]
    o_all, steps, lanes = w.shape
    p[:] = 0.0
    if o + 2 * R <= o_all:
        for off in range(0, R * steps * lanes, 64):
            _prefetch(w, o + R, off)
    if n == R:
        for jj in range(steps):
            for ln in range(lanes):
                e = xa[jj, ln]
                p[0, ln] += np.float32(w[o, jj, ln]) * e
                p[1, ln] += np.float32(w[o + 1, jj, ln]) * e
                p[2, ln] += np.float32(w[o + 2, jj, ln]) * e
                p[3, ln] += np.float32(w[o + 3, jj, ln]) * e
                p[4, ln] += np.float32(w[o + 4, jj, ln]) * e
                p[5, ln] += np.float32(w[o + 5, jj, ln]) * e
                p[6, ln] += np.float32(w[o + 6, jj, ln]) * e
                p[7, ln] += np.float32(w[o + 7, jj, ln]) * e
    else:
        for r in range(n):
            for jj in range(steps):
                for ln in range(lanes):
                    p[r, ln] += np.float32(w[o + r, jj, ln]) * xa[jj, ln]


ROW_BLOCK = 64  # rows per work item of `linear`: enough work to amortize a thread hand-off
# Below this many weight bytes x tokens, `linear` runs on the calling thread: waking a worker
# costs 50-250 us with compute_wait = "sleep" (a router's 256 KB takes ~15 us on one core).
SERIAL_BYTES = 1 << 20


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True, parallel=True)
def linear(buf: np.ndarray, m: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out (T, O) = x (T, In) @ W.T for one matrix in kernel layout; rows split across threads."""
    o_dim = m[M_O]
    blocks = (o_dim + ROW_BLOCK - 1) // ROW_BLOCK
    t_n = x.shape[0]
    for item in prange(blocks * t_n):
        t = item // blocks
        r0 = (item % blocks) * ROW_BLOCK
        r1 = min(r0 + ROW_BLOCK, o_dim)
        _rows(buf, m, x[t], r0, r1, out[t, r0:r1])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def linear_serial(buf: np.ndarray, m: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """`linear` on the calling thread, for matrices too small to hand out (SERIAL_BYTES)."""
    for t in range(x.shape[0]):
        _rows(buf, m, x[t], 0, m[M_O], out[t])


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _silu_mul(g: np.ndarray, u: np.ndarray, h: np.ndarray) -> None:
    for j in range(h.size):
        h[j] = g[j] / (np.float32(1.0) + np.exp(-g[j])) * u[j]


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True, parallel=True)
def expert_ffn(
    arena: np.ndarray,
    slots: np.ndarray,
    mats: np.ndarray,
    x: np.ndarray,
    pair_tok: np.ndarray,
    ptr: np.ndarray,
    out: np.ndarray,
) -> None:
    """SwiGLU experts: for expert i (its weights in arena[slots[i]], matrices gate, up, down
    described by mats rows 0..2) and each of its pairs p in ptr[i]..ptr[i+1]:
    out[p] = down(silu(gate(x[pair_tok[p]])) * up(x[pair_tok[p]])). Pairs split across
    threads (not experts: in a prompt one expert may have 10 tokens and the next 1, and the
    threads would wait for the busiest); consecutive pairs share an expert, so a thread's
    weights stay in its cache. arena (S, B) uint8; x (T, D) float32; out (P, D) float32."""
    inter = mats[0, M_O]
    d_out = mats[2, M_O]
    owner = np.empty(ptr[slots.size], np.int64)  # expert index of each pair
    for i in range(slots.size):
        owner[ptr[i] : ptr[i + 1]] = i
    for p in prange(owner.size):
        buf = arena[slots[owner[p]]]
        g = np.empty(inter, np.float32)
        u = np.empty(inter, np.float32)
        h = np.empty(inter, np.float32)
        xt = x[pair_tok[p]]
        _rows(buf, mats[0], xt, 0, inter, g)
        _rows(buf, mats[1], xt, 0, inter, u)
        _silu_mul(g, u, h)
        _rows(buf, mats[2], h, 0, d_out, out[p])


def set_wait_policy(wait: str) -> bool:
    """ "spin" or "sleep" for the worker threads between kernel calls (OpenMP's wait policy).
    Only possible before the threads start (the first parallel kernel of the process): returns
    whether it was applied. A policy the user set in OMP_WAIT_POLICY is left alone."""
    import os

    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", False) or "OMP_WAIT_POLICY" in os.environ:
        return False
    # spin: libgomp's default (spin a while, then sleep); sleep: yield the core at once.
    if wait == "sleep":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel now, on tiny inputs, so the first
    token is not slowed by it and a memory budget measures the process with the JIT loaded."""
    from engine.repack import repack_quantized

    table, nbytes = layout_table([(FMT_Q4, 4, 64, 64), (FMT_Q4, 4, 64, 64), (FMT_Q4, 64, 4, 4)])
    buf = np.zeros((1, nbytes), np.uint8)
    w = np.zeros(4 * 64 // 2, np.uint8)
    scales = np.zeros(4, np.float32)
    repack_quantized(w, scales, scales, 4, FMT_Q4, 4, 64, 64, int(table[0, M_F]), buf[0])
    x = np.zeros((1, 64), np.float32)
    linear(buf[0], table[0], x, np.zeros((1, 4), np.float32))
    linear_serial(buf[0], table[0], x, np.zeros((1, 4), np.float32))
    one = np.zeros(1, np.int64)
    expert_ffn(buf, one, table, x, one, np.array([0, 1]), np.zeros((1, 64), np.float32))
