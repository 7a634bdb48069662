"""CPU path host syncs: fused sibling projections, host-chained decoder layers, the count."""

from __future__ import annotations

import types
from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache

from engine.config import EngineConfig
from engine.cpu_linear import HOST, CpuLinear, HostBridge, SiblingLinear, use_cpu_linears
from engine.host_moe import group_select, route
from engine.runtime import Engine
from engine.store import Store

PROMPT = [5, 9, 17, 33, 65, 101, 7]


class _Attn(nn.Module):
    def __init__(self, quantized: bool, k_in: int = 64) -> None:
        super().__init__()
        self.q_proj = nn.Linear(64, 96, bias=True)
        self.k_proj = nn.Linear(k_in, 32, bias=True)
        self.v_proj = nn.Linear(64, 48, bias=True)
        if quantized:
            for name in ("q_proj", "k_proj", "v_proj"):
                self[name] = nn.QuantizedLinear.from_linear(self[name], group_size=32, bits=4)


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_siblings_equal_each_projection_alone(quantized: bool) -> None:
    mx.random.seed(0)
    attn = _Attn(quantized)
    alone = {n: CpuLinear.from_linear(attn[n]) for n in ("q_proj", "k_proj", "v_proj")}
    held = use_cpu_linears(attn)
    assert all(isinstance(attn[n], SiblingLinear) for n in alone)
    assert held == sum(t.nbytes for t in alone.values())  # one buffer, counted once
    x = mx.random.normal((2, 3, 64), key=mx.random.key(1))
    for n, twin in alone.items():  # rows are independent: stacking them changes no bit
        assert attn[n].output_dims == twin.output_dims
        np.testing.assert_array_equal(np.array(attn[n](x)), np.array(twin(x)))
    # A sibling called on another input computes for that input, not the last one's share.
    x2 = mx.random.normal((2, 3, 64), key=mx.random.key(2))
    np.testing.assert_array_equal(np.array(attn.k_proj(x2)), np.array(alone["k_proj"](x2)))


def test_siblings_that_cannot_stack_stay_separate() -> None:
    attn = _Attn(quantized=False, k_in=32)  # k reads another width: no common input
    use_cpu_linears(attn)
    assert [type(attn[n]).__name__ for n in ("q_proj", "k_proj", "v_proj")] == ["CpuLinear"] * 3


def test_host_bridge_counts_only_conversions_of_mlx_results() -> None:
    bridge = HostBridge()
    a = bridge.from_host(np.ones((2, 4), np.float32))
    assert bridge.to_host(a) is not None and bridge.syncs == 0  # made from numpy: no sync
    b = a * 2  # computed by MLX
    np.testing.assert_array_equal(bridge.to_host(b), np.full((2, 4), 2.0, np.float32))
    assert bridge.syncs == 1
    bridge.to_host(b)  # converted once already
    assert bridge.syncs == 1
    ids = mx.array([3, 1], mx.uint32)  # routing ids keep their dtype and are not remembered
    assert bridge.to_host(ids, None).dtype == np.uint32 and bridge.syncs == 2
    assert bridge.to_host(ids).dtype == np.float32 and bridge.syncs == 3
    big = bridge.from_host(np.zeros(HostBridge.KEEP_BYTES // 4 + 1, np.float32))
    bridge.to_host(big)  # too big to keep alive (a prompt's logits): converted again
    assert bridge.syncs == 4


def test_routing_by_hand() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 0.0]], np.float32)
    e = np.exp(logits[0] - 3.0)
    probs = e / e.sum()
    inds, scores = route("softmax_topk", logits, 2, norm_topk=False)
    assert sorted(inds[0].tolist()) == [1, 2]
    np.testing.assert_allclose(np.sort(scores[0]), np.sort(probs[[1, 2]]), rtol=1e-6)
    _, normed = route("softmax_topk", logits, 2, norm_topk=True)
    np.testing.assert_allclose(np.sort(normed[0]), np.sort(probs[[1, 2]] / probs[[1, 2]].sum()))
    inds, scores = route("topk_softmax", logits, 2, norm_topk=False)  # softmax of (3, 2)
    by_expert = dict(zip(inds[0].tolist(), scores[0].tolist(), strict=True))
    assert by_expert[1] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert by_expert[2] == pytest.approx(1 / (1 + np.exp(1.0)))


def _engine(store: Store, **knobs: object) -> Engine:
    return Engine(store, EngineConfig(cache_bytes=1 << 30, compute_path="cpu", **knobs))


CHAINED_FAMILIES = ["qwen3_moe", "mixtral", "olmoe", "qwen2_moe", "deepseek_v3"]


@pytest.mark.parametrize("family", CHAINED_FAMILIES)
def test_chained_layer_equals_mlx_lm_layer(packed_store: Callable[..., Store], family: str) -> None:
    # qwen2_moe: a sigmoid-gated shared expert; deepseek_v3: MLA attention (its q_a_layernorm
    # on the host), sigmoid + bias routing, shared experts, a first dense layer.
    with _engine(packed_store(family, bits=4)) as eng:
        layers = eng.model.model.layers
        assert eng.chained_layers == len(layers)
        d = int(eng.model_config["hidden_size"])
        for layer in layers:
            plain = type(layer).__mro__[1].__call__  # mlx-lm's own layer
            assert type(layer).__name__ == f"Chained{type(layer).__mro__[1].__name__}"
            caches = KVCache(), KVCache()
            # a prompt, decode steps (qwen3_moe: attention on the host, its KV mirrored), a
            # second prompt chunk (MLX attends over the host's positions too), a decode step
            for step, t in enumerate((5, 1, 1, 3, 1)):
                x = mx.random.normal((1, t, d), key=mx.random.key(10 + step))
                # deepseek_v3's model hands its MLA an array mask, the others a "causal" tag
                mask = create_attention_mask(x, caches[0], return_array=family == "deepseek_v3")
                want = np.array(plain(layer, x, mask, caches[0]))
                got = np.array(layer(x, mask, caches[1]))
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def _syncs_per_decode_step(eng: Engine) -> float:
    counts = []
    for n in (2, 6):  # a prompt + (n - 1) decode steps
        s0 = HOST.syncs
        eng.generate(PROMPT, n)
        counts.append(HOST.syncs - s0)
    return (counts[1] - counts[0]) / 4


@pytest.mark.parametrize("family", CHAINED_FAMILIES)
def test_one_host_sync_per_layer(packed_store: Callable[..., Store], family: str) -> None:
    with _engine(packed_store(family, bits=4)) as eng:
        n_layers = len(eng.model.model.layers)
        # one per layer (its attention output), none where a decode step's attention runs on
        # the host too (all but deepseek_v3's MLA), + the embedding lookup + the lm_head's input
        assert eng.host_attention_layers == (0 if family == "deepseek_v3" else n_layers)
        assert _syncs_per_decode_step(eng) == n_layers - eng.host_attention_layers + 2


def test_chained_layers_read_experts_per_token(packed_store: Callable[..., Store]) -> None:
    with _engine(packed_store("qwen3_moe", bits=4), experts_per_token=1) as eng:
        assert eng.chained_layers == len(eng.model.model.layers)
        asked = []
        for n in (2, 6):
            r0 = eng.counters()["expert_requests"]
            eng.generate(PROMPT, n)
            asked.append(eng.counters()["expert_requests"] - r0)
        assert asked[1] - asked[0] == 4 * 1 * eng.chained_layers  # 4 decode steps, k = 1


def test_unchained_layers_keep_mlx_lms_call(packed_store: Callable[..., Store]) -> None:
    # An unknown feed-forward block: the layer keeps mlx-lm's call (and its syncs), and the
    # engine still answers as mlx-lm does.
    with _engine(packed_store("qwen2_moe", bits=4)) as eng, pytest.MonkeyPatch.context() as mp:
        mp.setattr("engine.host_moe.BLOCKS", {})
        from engine.cpu_chain import chain_layers

        assert chain_layers(eng.model) == (0, 0)


@pytest.mark.parametrize("n_group", [1, 4])
def test_group_select_equals_mlx_lms(n_group: int) -> None:
    from mlx_lm.models.deepseek_v3 import group_expert_select

    rng = np.random.default_rng(n_group)
    logits = rng.standard_normal((5, 32)).astype(np.float32)
    bias = (rng.standard_normal(32) * 0.1).astype(np.float32)
    gate = types.SimpleNamespace(
        top_k=4, n_group=n_group, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True
    )
    inds, w = group_select(logits, bias, gate)
    ref_i, ref_w = group_expert_select(mx.array(logits), mx.array(bias), 4, n_group, 2, 2.5, True)
    ref_i, ref_w = np.array(ref_i), np.array(ref_w)
    for t in range(5):  # the same experts with the same weights, in any order
        got = dict(zip(inds[t].tolist(), w[t].tolist(), strict=True))
        want = dict(zip(ref_i[t].tolist(), ref_w[t].tolist(), strict=True))
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[e] for e in want], list(want.values()), rtol=1e-6)


def test_host_kv_mirror_grows_and_flushes_back() -> None:
    from engine.host_attention import HostKV, flush

    cache = KVCache()
    k0 = mx.random.normal((1, 2, 3, 4), key=mx.random.key(0))
    v0 = mx.random.normal((1, 2, 3, 4), key=mx.random.key(1))
    cache.update_and_fetch(k0, v0)
    hk = HostKV(np.array(k0[0]), np.array(v0[0]))
    cache._host_kv = hk
    rng = np.random.default_rng(0)
    added = [(rng.standard_normal((2, 4)), rng.standard_normal((2, 4))) for _ in range(300)]
    for k, v in added:  # past the first capacity (256): the mirror grows
        hk.append(k.astype(np.float32), v.astype(np.float32))
        cache.offset += 1
    assert hk.n == 303 and hk.k.shape[1] >= 303
    flush(cache)  # MLX's arrays get the 300 host positions
    keys, vals = cache.keys_and_values()
    assert cache.offset == 303 and keys.shape[2] == 303 and hk.in_mlx == 303
    np.testing.assert_array_equal(np.array(keys[0, :, :3]), np.array(k0[0]))
    want_k = np.stack([k for k, _ in added], axis=1).astype(np.float32)
    np.testing.assert_array_equal(np.array(keys[0, :, 3:]), want_k)
    np.testing.assert_array_equal(np.array(vals[0, :, 3:]), hk.v[:, 3:303])


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dims", [16, 12])
def test_host_rope_equals_mlx_fast_rope(traditional: bool, dims: int) -> None:
    from engine.host_attention import rope

    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    half = dims // 2
    inv_freq = (10000.0 ** -(np.arange(half, dtype=np.float64) / half)).astype(np.float32)
    for pos in (0, 7, 300):
        want = mx.fast.rope(
            mx.array(x)[None, :, None, :],
            dims,
            traditional=traditional,
            base=10000.0,
            scale=1.0,
            offset=pos,
        )
        got = rope(x, pos, inv_freq, traditional)
        np.testing.assert_allclose(got, np.array(want)[0, :, 0, :], rtol=0, atol=2e-5)
