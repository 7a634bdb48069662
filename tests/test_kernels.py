"""The CPU compute path's kernels and modules against MLX's own ops, and by hand."""

from __future__ import annotations

import time
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from engine import kernels as K
from engine.arena import ExpertArena
from engine.config import EngineConfig
from engine.cpu_linear import CpuLinear, use_cpu_linears
from engine.errors import ConfigError, NonFiniteError
from engine.repack import repack_quantized
from engine.runtime import Engine
from engine.store import Store


def _packed(o: int, i: int, bits: int, gs: int, seed: int = 0):
    w = mx.random.normal((o, i), key=mx.random.key(seed))
    q, s, b = mx.quantize(w, gs, bits)
    fmt = K.matrix_format(bits, "")
    table, nbytes = K.layout_table([(fmt, o, i, gs)])
    buf = np.zeros(nbytes, np.uint8)
    repack_quantized(
        np.array(q).view(np.uint8).ravel(),
        np.array(s.astype(mx.float32)).ravel(),
        np.array(b.astype(mx.float32)).ravel(),
        bits,
        fmt,
        o,
        i,
        gs,
        int(table[0, K.M_F]),
        buf,
    )
    return (q, s, b), buf, table


@pytest.mark.parametrize(("bits", "gs"), [(4, 64), (4, 32), (4, 128), (8, 64), (3, 64), (2, 32)])
@pytest.mark.parametrize(("o", "i"), [(96, 256), (256, 128), (20, 384)])
def test_quantized_linear_equals_mlx_quantized_matmul(o: int, i: int, bits: int, gs: int) -> None:
    (q, s, b), buf, table = _packed(o, i, bits, gs)
    x = np.random.default_rng(1).standard_normal((3, i)).astype(np.float32)
    out = np.empty((3, o), np.float32)
    K.linear(buf, table[0], x, out)
    ref = np.array(
        mx.quantized_matmul(mx.array(x), q, s, b, transpose=True, group_size=gs, bits=bits)
    )
    # Same float32 math, another summation order: equal to a few ulps of the row's magnitude.
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * float(np.abs(ref).max()))


@pytest.mark.parametrize(("bits", "gs"), [(4, 64), (8, 64), (2, 32)])
def test_serial_linear_is_bit_equal_to_the_threaded_one(bits: int, gs: int) -> None:
    # Small matrices run on the caller's thread (K.SERIAL_BYTES); each row's arithmetic is the
    # same either way, so the choice can never change an output.
    _, buf, table = _packed(200, 256, bits, gs, seed=4)
    x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    a, b = np.empty((3, 200), np.float32), np.empty((3, 200), np.float32)
    K.linear(buf, table[0], x, a)
    K.linear_serial(buf, table[0], x, b)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16, mx.float32])
def test_cpu_linear_equals_mlx_linear(dtype: mx.Dtype) -> None:
    layer = nn.Linear(192, 72, bias=True)
    layer.set_dtype(dtype)
    twin = CpuLinear.from_linear(layer)
    assert twin is not None
    x = mx.random.normal((2, 5, 192), key=mx.random.key(3))
    # Ours widens 16-bit weights to float32 exactly and computes in float32, as the float32
    # reference model does (MLX's own bf16 Linear would round x and y to bf16 too).
    w, b = layer.weight.astype(mx.float32), layer.bias.astype(mx.float32)
    ref = x @ w.T + b
    got = twin(x)
    assert got.shape == (2, 5, 72)
    np.testing.assert_allclose(np.array(got), np.array(ref), rtol=0, atol=1e-4)


def test_cpu_quantized_linear_equals_mlx() -> None:
    layer = nn.QuantizedLinear(256, 64, bias=True, group_size=64, bits=4)
    twin = CpuLinear.from_linear(layer)
    assert twin is not None
    x = mx.random.normal((4, 256), key=mx.random.key(4))
    np.testing.assert_allclose(np.array(twin(x)), np.array(layer(x)), rtol=0, atol=1e-4)


def test_use_cpu_linears_swaps_every_dense_layer_and_nothing_else() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Embedding(10, 8), nn.Linear(8, 4, bias=False))
    held = use_cpu_linears(model)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["CpuLinear", "Embedding", "CpuLinear"]
    assert held == (8 * 8 * 4 + 8 * 4) + 8 * 4 * 4  # float32 weights (+ bias) as held
    assert "weight" not in dict(model.layers[0].parameters())  # nothing left for MLX to load


def test_expert_ffn_hand_checked() -> None:
    # Two float32 experts on D = 2: gate = up = I, down = (e+1) I, so
    # expert_e(x) = (e+1) * silu(x) * x; pairs (token 0, expert 1) and (token 1, expert 0).
    table, slot = K.layout_table([(K.FMT_F32, 2, 2, 0)] * 3)
    arena = np.zeros((2, slot), np.uint8)
    for e in range(2):
        for r, scale in enumerate((1.0, 1.0, e + 1.0)):
            off = int(table[r, K.M_OFF])
            arena[e, off : off + 16].view(np.float32)[:] = (np.eye(2) * scale).ravel()
    x = np.array([[1.0, 2.0], [-1.0, 0.5]], np.float32)
    out = np.empty((2, 2), np.float32)
    K.expert_ffn(
        arena, np.array([0, 1]), table, x, np.array([1, 0]), np.array([0, 1, 2]), out
    )  # slot 0 (expert 0) gets pair 0 = token 1; slot 1 (expert 1) gets pair 1 = token 0
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    np.testing.assert_allclose(out[0], [silu(-1.0) * -1.0, silu(0.5) * 0.5], rtol=1e-6)
    np.testing.assert_allclose(out[1], [2 * silu(1.0), 2 * silu(2.0) * 2.0], rtol=1e-6)


def test_expert_ffn_pairs_equal_each_pair_alone() -> None:
    # A prompt: uneven pairs per expert (4, 1, 3), split across threads by pair. Each pair's
    # arithmetic does not depend on the split, so every output is bit-equal to the pair alone.
    rng = np.random.default_rng(5)
    d, inter, gs = 128, 64, 32
    table, slot = K.layout_table(
        [(K.FMT_Q4, inter, d, gs), (K.FMT_Q4, inter, d, gs), (K.FMT_Q4, d, inter, gs)]
    )
    arena = np.zeros((3, slot), np.uint8)
    for e in range(3):
        for r in range(3):
            _, o, i, _, off, f = (int(v) for v in table[r])
            w = rng.integers(0, 256, o * i // 2, dtype=np.uint8)
            sc = (rng.standard_normal(o * i // gs) * 0.05).astype(np.float32)
            dst = arena[e, off : off + K.matrix_bytes(K.FMT_Q4, o, i, gs)]
            repack_quantized(w, sc, -sc, 4, K.FMT_Q4, o, i, gs, f, dst)
    x = rng.standard_normal((6, d)).astype(np.float32)
    slots, pair_tok = np.array([2, 0, 1]), np.array([0, 1, 2, 5, 3, 1, 4, 5])
    ptr = np.array([0, 4, 5, 8])
    out = np.empty((8, d), np.float32)
    K.expert_ffn(arena, slots, table, x, pair_tok, ptr, out)
    for p, tok in enumerate(pair_tok):
        owner = int(np.searchsorted(ptr, p, side="right") - 1)
        alone = np.empty((1, d), np.float32)
        K.expert_ffn(
            arena, slots[owner : owner + 1], table, x, pair_tok[p : p + 1], np.array([0, 1]), alone
        )
        np.testing.assert_array_equal(out[p], alone[0], err_msg=f"pair {p} (token {tok})")


def test_arena_slots_follow_the_cache(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe", bits=4)
    with Engine(store, EngineConfig(compute_path="cpu", cache_bytes=0)) as probe:
        entry = probe.entry_bytes
    cfg = EngineConfig(compute_path="cpu", cache_bytes=3 * entry)
    with Engine(store, cfg) as engine:
        arena = engine.arena
        assert arena is not None and arena.cache_slots == 3
        assert arena.work_slots == engine.top_k
        engine.generate([5, 9, 17, 33, 65], 4)
        # Every slot is either the cache's or free: none leaks through evictions.
        assert len(engine.cache) <= 3
        total = arena.cache_slots + arena.work_slots + arena.staging_slots
        assert arena.free_slots == total - len(engine.cache)


def test_prefetch_guesses_give_their_slots_back(packed_store: Callable[..., Store]) -> None:
    # Guesses are repacked straight into arena slots; wrong ones (depth 2: many) must return
    # them, whether dropped before, during or after their read.
    store = packed_store("qwen3_moe", bits=4)
    cfg = EngineConfig(
        compute_path="cpu", cache_bytes=0, prefetch="next_layer", prefetch_depth=2, io_threads=3
    )
    with Engine(store, cfg) as engine:
        arena = engine.arena
        assert arena is not None and arena.staging_slots == 2 * engine.top_k
        engine.generate([5, 9, 17, 33, 65], 6)
        assert engine.prefetcher is not None and engine.prefetcher.stats.wasted > 0
        engine.prefetcher.drain()
        total = arena.cache_slots + arena.work_slots + arena.staging_slots
        deadline = time.monotonic() + 10
        while arena.free_slots != total - len(engine.cache) and time.monotonic() < deadline:
            time.sleep(0.01)  # reads still in flight give theirs back when they finish
        assert arena.free_slots == total - len(engine.cache)


def test_a_prompt_with_a_full_cache_and_guesses_never_runs_out_of_slots(
    packed_store: Callable[..., Store],
) -> None:
    # A prompt's layer goes through its experts in groups; guesses handed over for its later
    # groups keep their slots meanwhile, and the next layer's guesses are read at the same
    # time: with the cache full, every group must still find its slots.
    store = packed_store("qwen3_moe", bits=4)
    with Engine(store, EngineConfig(compute_path="cpu", cache_bytes=0)) as probe:
        entry = probe.entry_bytes
    cfg = EngineConfig(
        compute_path="cpu",
        cache_bytes=4 * entry,
        io_mode="direct",
        prefetch="next_layer",
        io_threads=8,
    )
    prompt = [(7 * i + 3) % 97 + 1 for i in range(24)]
    with Engine(store, cfg) as engine:
        for _ in range(3):
            engine.generate(prompt, 6)
        assert len(engine.cache) == 4
        assert engine.provider.stats.staged_hits > 0


def test_guesses_hold_at_most_the_staging_slots(packed_store: Callable[..., Store]) -> None:
    # A guess may not take more than the staging slots even while others are free (the
    # cache's, or the group's): guesses handed over for a prompt's later groups keep theirs
    # while the next layer's are read, and a rule of "leave the group's slots free" ran out of
    # slots in the I/O-bound benchmark. A guess past them gets a buffer instead.
    store = packed_store("qwen3_moe", bits=4)
    arena = ExpertArena(store, cache_slots=2, work_slots=1, staging_slots=1)
    from engine.reader import ExpertReader

    with ExpertReader(store, "buffered", 1 << 20, 1) as reader:
        raw = reader.submit(store.moe_layers[0], 3).result()
    first = arena.load(raw, speculative=True)
    assert isinstance(first, int)  # the staging slot
    second = arena.load(raw, speculative=True)
    assert not isinstance(second, int) and arena.free_slots == 3  # a buffer, 3 slots free
    taken = arena.slot_of(first)  # its layer takes it: the staging slot is free again
    third = arena.load(raw, speculative=True)
    assert isinstance(third, int)
    demand = [arena.load(raw), arena.slot_of(second)]
    assert all(isinstance(s, int) for s in demand) and arena.free_slots == 0
    for s in (taken, third, *demand):  # all four hold the same expert, byte for byte
        np.testing.assert_array_equal(arena.data[s], arena.data[first])
    arena.release(second)  # a buffer: nothing to give back
    for s in (taken, third, *demand):
        arena.release(s)
    assert arena.free_slots == 4


def test_arena_load_matches_mlx_dequantize(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe", bits=4)
    arena = ExpertArena(store, cache_slots=1, work_slots=1)
    from engine.reader import ExpertReader

    with ExpertReader(store, "buffered", 1 << 20, 1) as reader:
        raw = reader.submit(store.moe_layers[0], 3).result()
    slot = arena.slot_of(arena.load(raw))  # what a reader thread and the provider do
    w = store.decode(raw)
    x = np.random.default_rng(0).standard_normal((1, int(w["gate_proj.scales"].shape[1]) * 64))
    x = x.astype(np.float32)
    out = np.empty((1, int(arena.mats[0, K.M_O])), np.float32)
    K.linear(arena.data[slot], arena.mats[0], x, out)
    ref = mx.quantized_matmul(
        mx.array(x),
        w["gate_proj.weight"],
        w["gate_proj.scales"],
        w["gate_proj.biases"],
        transpose=True,
        group_size=store.group_size,
        bits=store.bits,
    )
    np.testing.assert_allclose(out, np.array(ref), rtol=0, atol=1e-4)


def test_non_finite_expert_output_names_the_layer(
    packed_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Weights that pass every checksum can still overflow; the layer that does it is named.
    store = packed_store("qwen3_moe", bits=16)
    with Engine(store, EngineConfig(compute_path="cpu", cache_bytes=0)) as engine:
        arena = engine.arena
        assert arena is not None
        slot_of = arena.slot_of

        def poisoned(loaded: int | np.ndarray) -> int:
            slot = slot_of(loaded)
            arena.data[slot][:] = 0xFF  # bfloat16 0xFFFF is NaN
            return slot

        monkeypatch.setattr(arena, "slot_of", poisoned)
        with pytest.raises(NonFiniteError, match=f"layer {store.moe_layers[0]}: experts"):
            engine.generate([5, 9], 1)


def test_compute_path_is_validated_and_resolved() -> None:
    with pytest.raises(ConfigError, match="compute_path"):
        EngineConfig(compute_path="gpu")
    from engine.runtime import resolve_compute_path

    assert resolve_compute_path("mlx") == "mlx"
    assert resolve_compute_path("auto") == ("cpu" if mx.default_device() == mx.cpu else "mlx")
