"""Streamed output == mlx-lm's in-memory output, for every family and every knob combination."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.switch_layers import SwiGLU, SwitchGLU

from engine.config import EngineConfig
from engine.families import FAMILIES, moe_blocks
from engine.generate import Generation, generate
from engine.model import load_reference
from engine.runtime import Engine
from engine.store import Store
from engine.streaming import StreamingSwitchGLU, prepare_weights
from engine.synth.hf import SYNTH_FAMILIES

FAMS = list(SYNTH_FAMILIES)  # every family synth can make: all of them stream
PROMPT = [5, 9, 17, 33, 65, 101, 7, 7, 12, 250, 3, 44]
N_NEW = 6
TOL = 1e-4  # MLX path: float32 everywhere; streamed and resident run the same ops in order
# CPU path (engine.kernels): the same float32 math summed in another order, so not bit-exact:
# greedy tokens must be equal and each step's next-token distribution within this KL.
KL_MAX = 1e-5


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Callable[[str], Path]) -> Callable[[str], Generation]:
    cache: dict[str, Generation] = {}

    def get(family: str) -> Generation:
        if family not in cache:
            cache[family] = generate(
                load_reference(tiny_checkpoint(family)), PROMPT, N_NEW, keep_logits=True
            )
        return cache[family]

    return get


def _all_experts_bytes(store: Store, config: EngineConfig) -> int:
    with Engine(store, config.replace(cache_bytes=0)) as e:
        return e.entry_bytes * len(store.layers) * store.num_experts


def _kl(ref_logits: np.ndarray, logits: np.ndarray) -> float:
    """KL(reference || ours) of the next-token distributions, in nats."""
    lp = ref_logits - np.logaddexp.reduce(ref_logits)
    lq = logits - np.logaddexp.reduce(logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def _assert_same(gen: Generation, ref: Generation, compute_path: str = "mlx") -> None:
    assert gen.tokens == ref.tokens  # top-1 agreement 1.0 on every path
    pairs = list(zip(gen.logits, ref.logits, strict=True))
    if compute_path == "mlx":
        diff = max(float(np.abs(a - b).max()) for a, b in pairs)
        assert diff <= TOL, f"max |dlogit| = {diff}"
    else:
        kl = max(_kl(b.astype(np.float64), a.astype(np.float64)) for a, b in pairs)
        assert kl <= KL_MAX, f"max KL = {kl}"


CACHE_SIZES = ("none", "some", "all")
MATRIX = list(
    itertools.product(
        ("direct", "buffered", "mmap"),
        ("lru", "lfu", "pinned"),
        ("none", "next_layer", "previous_token"),
        CACHE_SIZES,
    )
)


@pytest.mark.parametrize(("io_mode", "policy", "prefetch", "size"), MATRIX)
@pytest.mark.parametrize("family", FAMS)
def test_every_knob_combination_matches_mlx_lm(
    packed_store: Callable[..., Store],
    reference: Callable[[str], Generation],
    family: str,
    io_mode: str,
    policy: str,
    prefetch: str,
    size: str,
) -> None:
    store = packed_store(family)
    base = EngineConfig(
        io_mode=io_mode, cache_policy=policy, prefetch=prefetch, read_chunk_bytes=8192, io_threads=3
    )
    total = _all_experts_bytes(store, base)
    cache = {"none": 0, "some": total // 4, "all": total}[size]
    with Engine(store, base.replace(cache_bytes=cache)) as engine:
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        assert engine.cache.used_bytes <= cache
        c = engine.counters()
        path = engine.compute_path
    _assert_same(gen, reference(family), path)
    if size == "none":
        assert c["cache_hits"] == 0
    if size == "all":
        # Everything fits: each expert is read at most once (prefetch may add unused reads).
        assert c["demand_reads"] + c["staged_hits"] <= len(store.layers) * store.num_experts


@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("compute_path", ["cpu", "mlx"])
@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(),
        EngineConfig(cache_bytes=0, io_mode="direct", prefetch="next_layer", prefetch_depth=2),
        EngineConfig(
            cache_bytes=300_000,
            cache_policy="lfu",
            io_mode="mmap",
            prefetch="previous_token",
            prefetch_width=2,
        ),
    ],
    ids=["default", "direct-nocache-next2", "mmap-lfu-prev"],
)
def test_every_family_matches_mlx_lm(
    packed_store: Callable[..., Store],
    reference: Callable[[str], Generation],
    family: str,
    compute_path: str,
    config: EngineConfig,
) -> None:
    with Engine(packed_store(family), config.replace(compute_path=compute_path)) as engine:
        assert engine.compute_path == compute_path
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
    _assert_same(gen, reference(family), compute_path)


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe"])
def test_store_from_mlx_community_checkpoint_matches_mlx_lm(
    mlx_quantized_checkpoint: Callable[[str], Path], tmp_path: Path, family: str
) -> None:
    from engine.pack import pack

    src = mlx_quantized_checkpoint(family)
    store = pack(src, tmp_path / "store", progress=False, bits=4, group_size=64)
    ref = generate(load_reference(src), PROMPT, N_NEW, keep_logits=True)
    with Engine(store, EngineConfig(prefetch="next_layer")) as engine:
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        path = engine.compute_path
    _assert_same(gen, ref, path)


@pytest.mark.parametrize("family", FAMS)
def test_experts_per_token_matches_mlx_lm_with_same_top_k(
    packed_store: Callable[..., Store], tiny_checkpoint: Callable[[str], Path], family: str
) -> None:
    ref_model = load_reference(tiny_checkpoint(family))
    fam = FAMILIES[family]
    k = fam.get_top_k(moe_blocks(ref_model)[0][2]) - 1
    for _, _, block in moe_blocks(ref_model):
        fam.set_top_k(block, k)
    ref = generate(ref_model, PROMPT, N_NEW, keep_logits=True)
    with Engine(packed_store(family), EngineConfig(experts_per_token=k)) as engine:
        assert engine.top_k == k
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        requests = engine.counters()["expert_requests"]
        path = engine.compute_path
    _assert_same(gen, ref, path)
    # Fewer experts per token really means fewer expert fetches.
    with Engine(packed_store(family), EngineConfig()) as engine:
        engine.generate(PROMPT, N_NEW)
        assert engine.counters()["expert_requests"] > requests


def test_quantized_store_is_close_but_not_equal(
    packed_store: Callable[..., Store], reference: Callable[[str], Generation]
) -> None:
    ref = reference("qwen3_moe")
    diffs = []
    for bits in (8, 4):
        with Engine(packed_store("qwen3_moe", bits=bits), EngineConfig()) as engine:
            gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        diffs.append(float(np.abs(gen.logits[0] - ref.logits[0]).max()))
    assert 0 < diffs[0] < diffs[1]  # 8-bit is nearer the reference than 4-bit


class _FakeProvider:
    def __init__(self, weights: dict[int, dict[str, mx.array]]) -> None:
        self.weights = weights
        self.calls: list[list[int]] = []

    def fetch(self, layer: int, experts: list[int], x: mx.array) -> list[dict[str, mx.array]]:
        self.calls.append(experts)
        return [prepare_weights(self.weights[e], None) for e in experts]


def _identity_experts(n: int, d: int) -> dict[int, dict[str, mx.array]]:
    # Expert e: gate = up = I, down = (e+1) I, so expert_e(x) = (e+1) * silu(x) * x.
    eye = mx.eye(d)
    return {
        e: {"gate_proj.weight": eye, "up_proj.weight": eye, "down_proj.weight": eye * (e + 1)}
        for e in range(n)
    }


def test_streaming_block_hand_checked() -> None:
    provider = _FakeProvider(_identity_experts(4, 2))
    block = StreamingSwitchGLU(layer=0, activation=SwiGLU(), quant=None)
    block.bind(provider, None)
    x = mx.array([[[1.0, 2.0]]])  # (B=1, L=1, D=2)
    y = block(x, mx.array([[[3, 0]]]))  # (1, 1, k=2, D)
    silu_x_x = [1 / (1 + np.exp(-1.0)) * 1 * 1, 2 / (1 + np.exp(-2.0)) * 2]  # 0.7311, 3.5232
    expected = [[4 * v for v in silu_x_x], [1 * v for v in silu_x_x]]
    np.testing.assert_allclose(np.array(y[0, 0]), expected, rtol=1e-5)
    assert provider.calls == [[0, 3]]  # each routed expert fetched once, sorted


def test_streaming_block_equals_switch_glu_for_many_tokens() -> None:
    n, d, h = 6, 8, 16
    ref = SwitchGLU(d, h, n)
    weights = {
        e: {f"{p}.weight": getattr(ref, p).weight[e] for p in ("gate_proj", "up_proj", "down_proj")}
        for e in range(n)
    }
    block = StreamingSwitchGLU(layer=0, activation=SwiGLU(), quant=None)
    provider = _FakeProvider(weights)
    block.bind(provider, None)
    x = mx.random.normal((2, 40, d), key=mx.random.key(1))
    idx = mx.random.randint(0, n, (2, 40, 3), key=mx.random.key(2))  # 240 pairs: sorted path
    np.testing.assert_allclose(np.array(block(x, idx)), np.array(ref(x, idx)), atol=1e-5)
    assert len(provider.calls) == 1 and provider.calls[0] == sorted(set(np.array(idx).ravel()))


@pytest.mark.parametrize("prefetch", ["next_layer", "previous_token"])
def test_prefetch_never_touches_the_cache(
    packed_store: Callable[..., Store], prefetch: str
) -> None:
    # Guesses wait in staging, so the cache evolves exactly as without prefetch: a wrong guess
    # can never evict an expert the current (or any) layer still needs.
    store = packed_store("qwen3_moe")
    base = EngineConfig(cache_bytes=_all_experts_bytes(store, EngineConfig()) // 5)
    seen = []
    every = [(le.layer, e) for le in store.layers for e in range(store.num_experts)]
    for cfg in (base, base.replace(prefetch=prefetch, prefetch_width=12, prefetch_depth=2)):
        with Engine(store, cfg) as engine:
            engine.generate(PROMPT, N_NEW)
            c = engine.counters()
            resident = {k for k in every if k in engine.cache}
            seen.append((c["cache_hits"], c["expert_requests"], c["cache_used_bytes"], resident))
    assert seen[0] == seen[1]
