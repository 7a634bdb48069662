"""Packing: every expert read back from the store equals its source, for every family and
variant; layout, dense weights and manifest are what the store format promises."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine.checkpoint import open_checkpoint
from engine.errors import CheckpointError
from engine.families import FAMILIES, build_skeleton, moe_blocks
from engine.layout import coactivation_order
from engine.pack import pack
from engine.store import Store


def read_expert(store: Store, layer: int, expert: int) -> dict[str, mx.array]:
    loc = store.expert(layer, expert)
    with open(store.layer_file(layer), "rb") as f:
        f.seek(loc.offset)
        buf = f.read(loc.nbytes)
    return store.decode(buf, where=f"layer {layer} expert {expert}")


def source_tensors(model_dir: Path) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def same(a: mx.array, b: mx.array) -> bool:
    """Bit-exact equality (NaN-safe, dtype included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == mx.bfloat16:
        a, b = a.view(mx.uint16), b.view(mx.uint16)
    return bool(mx.array_equal(a, b).item())


@pytest.mark.parametrize("family", FAMILIES)
def test_16bit_experts_are_bit_exact(family: str, tiny_checkpoint, packed_store) -> None:
    store = packed_store(family)
    ckpt = open_checkpoint(tiny_checkpoint(family))
    src = source_tensors(ckpt.root)
    assert store.bits == 16 and store.dtype == "bfloat16"
    assert [le.block for le in store.layers] == [b.path for b in ckpt.blocks]
    for block in ckpt.blocks:
        for e in range(store.num_experts):
            got = read_expert(store, block.layer, e)
            for proj in ckpt.family.mlx_projections:
                key = ckpt.family.hf_expert_key(block.path, e, proj)
                assert same(got[f"{proj}.weight"], src[key]), key


@pytest.mark.parametrize(
    ("family", "bits"), [("qwen3_moe", 8), ("qwen3_moe", 4), ("qwen3_moe", 2), ("mixtral", 4)]
)
def test_quantized_experts_equal_mx_quantize(
    family: str, bits: int, tiny_checkpoint, packed_store
) -> None:
    store = packed_store(family, bits=bits, group_size=64)
    ckpt = open_checkpoint(tiny_checkpoint(family))
    src = source_tensors(ckpt.root)
    assert (store.bits, store.group_size) == (bits, 64)
    for block in ckpt.blocks:
        for e in range(store.num_experts):
            got = read_expert(store, block.layer, e)
            for proj in ckpt.family.mlx_projections:
                w = src[ckpt.family.hf_expert_key(block.path, e, proj)]
                q, s, b = mx.quantize(w, group_size=64, bits=bits)
                assert same(got[f"{proj}.weight"], q)
                assert same(got[f"{proj}.scales"], s)
                assert same(got[f"{proj}.biases"], b)


def test_per_expert_quantization_matches_stacked(tiny_checkpoint, packed_store) -> None:
    """What mlx-lm's QuantizedSwitchLinear holds is mx.quantize of the stacked (E, out, in)
    tensor; groups run along the last axis, so slice e of it is expert e's own quantization."""
    store = packed_store("qwen3_moe", bits=4, group_size=64)
    ckpt = open_checkpoint(tiny_checkpoint("qwen3_moe"))
    src = source_tensors(ckpt.root)
    block = ckpt.blocks[0]
    stacked = mx.stack(
        [src[ckpt.family.hf_expert_key(block.path, e, "up_proj")] for e in range(16)]
    )
    q, s, b = mx.quantize(stacked, group_size=64, bits=4)
    for e in (0, 7, 15):
        got = read_expert(store, block.layer, e)
        assert same(got["up_proj.weight"], q[e]) and same(got["up_proj.scales"], s[e])
        assert same(got["up_proj.biases"], b[e])


def test_manifest_alignment_and_fingerprints(packed_store) -> None:
    s16, s4 = packed_store("qwen3_moe"), packed_store("qwen3_moe", bits=4)
    for store in (s16, s4):
        assert store.align == 4096
        assert all(t.offset % 64 == 0 for t in store.expert_tensors)
        for le in store.layers:
            offsets = sorted(x.offset for x in le.experts)
            assert offsets == [i * store.expert_span for i in range(store.num_experts)]
            assert store.expert_span % 4096 == 0 and store.expert_span >= store.expert_nbytes
            assert (store.root / le.file).stat().st_size == le.file_size
    assert s16.fingerprint != s4.fingerprint
    assert s16.manifest["source"]["fingerprint"] == s4.manifest["source"]["fingerprint"]
    assert s16.top_k == 4 and s16.manifest["created"]


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_holds_every_non_expert_tensor(family: str, tiny_checkpoint, packed_store) -> None:
    store = packed_store(family)
    src = source_tensors(tiny_checkpoint(family))
    dense = mx.load(str(store.dense_dir / "model.safetensors"))
    expert_keys = {k for k in src if ".experts." in k and "shared_expert" not in k}
    assert set(dense) == set(src) - expert_keys
    for k, v in dense.items():
        assert same(v, src[k]), k
    assert json.loads((store.dense_dir / "config.json").read_text())["model_type"] == family
    assert "quantization" not in store.config  # experts' quantization lives in the manifest
    assert (store.dense_dir / "probe_suite.toml").is_file()


def test_dense_loads_into_mlx_lm_skeleton(packed_store) -> None:
    """The dense file plus the store's experts is exactly what mlx-lm's model wants."""
    store = packed_store("deepseek_v3")
    model = build_skeleton(store.config)
    dense = mx.load(str(store.dense_dir / "model.safetensors"))
    weights = model.sanitize(dict(dense))
    for layer, path, _block in moe_blocks(model):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            experts = [read_expert(store, layer, e)[f"{proj}.weight"] for e in range(16)]
            weights[f"{path}.switch_mlp.{proj}.weight"] = mx.stack(experts)
    model.load_weights(list(weights.items()), strict=True)


def test_mlx_community_store_round_trips(mlx_quantized_checkpoint, tmp_path: Path) -> None:
    src_dir = mlx_quantized_checkpoint("qwen3_moe")
    store = pack(src_dir, tmp_path / "store", progress=False)
    ckpt = open_checkpoint(src_dir)
    assert ckpt.layout == "stacked" and (store.bits, store.group_size) == (4, 64)
    src = source_tensors(src_dir)
    for block in ckpt.blocks:
        for e in range(store.num_experts):
            got = read_expert(store, block.layer, e)
            for proj in ("gate_proj", "up_proj", "down_proj"):
                for part in ("weight", "scales", "biases"):
                    stacked = src[f"{block.path}.switch_mlp.{proj}.{part}"]
                    assert same(got[f"{proj}.{part}"], stacked[e])
    dense = mx.load(str(store.dense_dir / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.scales" in dense  # non-experts stay quantized
    assert not any("switch_mlp" in k for k in dense)
    assert store.config["quantization"]["bits"] == 4
    # Asking for the same quantization is fine; asking for another one is refused.
    pack(src_dir, tmp_path / "same", bits=4, group_size=64, progress=False)
    with pytest.raises(CheckpointError, match="full-precision"):
        pack(src_dir, tmp_path / "other", bits=2, progress=False)


def test_unquantized_mlx_convert_round_trips(mlx_quantized_checkpoint, tmp_path: Path) -> None:
    src_dir = mlx_quantized_checkpoint("qwen3_moe", quantize=False)
    store = pack(src_dir, tmp_path / "store", bits=4, progress=False)
    ckpt = open_checkpoint(src_dir)
    assert ckpt.layout == "stacked" and ckpt.quant is None
    src = source_tensors(src_dir)
    for block in ckpt.blocks:
        for e in (0, 9):
            got = read_expert(store, block.layer, e)
            w = src[f"{block.path}.switch_mlp.down_proj.weight"][e]
            q, s, b = mx.quantize(w, group_size=64, bits=4)
            assert same(got["down_proj.weight"], q) and same(got["down_proj.scales"], s)
            assert same(got["down_proj.biases"], b)


def test_coactivation_layout_is_a_permutation_with_profile(tiny_checkpoint, packed_store) -> None:
    store = packed_store("qwen3_moe", layout="coactivation")
    natural = packed_store("qwen3_moe")
    profile = store.profile()
    assert profile is not None and set(profile) == set(store.moe_layers)
    for le in store.layers:
        assert sorted(le.order) == list(range(16))
        assert le.order[0] == int(np.argmax(profile[le.layer]))  # chain starts at the hottest
        assert sum(profile[le.layer]) % store.top_k == 0 and sum(profile[le.layer]) > 0
        for pos, e in enumerate(le.order):
            assert le.experts[e].offset == pos * store.expert_span
    assert any(le.order != tuple(range(16)) for le in store.layers)
    # Reordering moves bytes, not contents.
    for e in (0, 5, 15):
        a, b = read_expert(store, 1, e), read_expert(natural, 1, e)
        assert all(same(a[k], b[k]) for k in a)


def test_coactivation_order_hand_checked() -> None:
    # 0 is hottest; 0 pairs with 2, 2 with 3, 3 with 1: the chain follows the pairs.
    counts = np.array([10, 3, 5, 4])
    coact = np.zeros((4, 4), dtype=int)
    for a, b, n in ((0, 2, 6), (2, 3, 4), (3, 1, 3), (0, 1, 1)):
        coact[a, b] = coact[b, a] = n
    assert coactivation_order(counts, coact) == [0, 2, 3, 1]


def test_natural_layout_with_calibration_writes_profile(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8]]
    store = pack(
        tiny_checkpoint("mixtral"), tmp_path / "s", calibration_prompts=prompts, progress=False
    )
    profile = store.profile()
    assert profile is not None
    top_k = store.top_k
    assert all(sum(v) == 8 * top_k for v in profile.values())
    assert all(le.order == tuple(range(store.num_experts)) for le in store.layers)
