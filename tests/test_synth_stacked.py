"""`synth --preset qwen3.5-397b-a17b`: real-shape checkpoints of a family without known HF names,
written in mlx-community layout from mlx-lm's skeleton (engine/synth/stacked.py).

The published shapes are checked on the lazy skeleton (nothing written: one 4-bit layer is
~3.6 GB); the writer itself runs on a scaled-down copy of the preset (same family, same 3:1
Gated DeltaNet / full-attention structure, small dims), which `pack` packs and the engine
decodes exactly as mlx-lm's own model loaded from the checkpoint does."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import engine.synth.hf as hf
import engine.synth.stacked as stacked
from engine.cli import main
from engine.config import EngineConfig
from engine.errors import CheckpointError
from engine.families import build_skeleton
from engine.generate import generate
from engine.model import load_reference
from engine.pack import pack
from engine.runtime import Engine
from engine.store import Store
from engine.synth import presets
from engine.synth.hf import TensorMaker, make_config, synthesize
from engine.synth.routing import RoutingKnobs, RoutingPlan

NAME = "qwen3.5-397b-a17b"
PROMPT = [5, 9, 17, 33, 65, 101, 7, 7, 12, 250, 3, 44]
N_NEW = 6
TOL = 1e-4
LM = "language_model.model.layers"
# Same family, keys and 3:1 layer pattern as the published config; dims small enough for a test
# (every expert/linear input a multiple of 64 so 4-bit groups fit, as at real shape).
SMALL = {
    "hidden_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "linear_num_value_heads": 4,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "moe_intermediate_size": 128,
    "shared_expert_intermediate_size": 128,
    "intermediate_size": 128,
    "num_experts": 32,
    "vocab_size": 512,
}
LAYERS = 5  # DeltaNet x3, full attention, DeltaNet: both kinds, and a cut mid-pattern


@pytest.fixture(scope="module", autouse=True)
def never_the_real_shape() -> Iterator[None]:
    """A test that would write the real shape (gigabytes: a monkeypatch gone missing) fails
    before the first byte instead of filling the disk."""
    write = hf.write_shards

    def small_only(out: Path, groups: list, *args: object, **kw: object) -> dict:
        total = sum(g.nbytes for g in groups)
        assert total < 64 << 20, f"a test tried to write {total / 1e9:.1f} GB"
        return write(out, groups, *args, **kw)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "write_shards", small_only)
        yield


@pytest.fixture
def small_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = presets.REAL_PRESETS[NAME]
    small = dataclasses.replace(spec, config={**spec.config, **SMALL}, shard_bytes=1 << 20)
    monkeypatch.setitem(presets.REAL_PRESETS, NAME, small)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], tuple[Path, Store]]:
    """built(bits) -> (checkpoint of the scaled-down preset, its packed store), once per bits."""
    root = tmp_path_factory.mktemp("qwen35")
    cache: dict[int, tuple[Path, Store]] = {}

    def get(bits: int) -> tuple[Path, Store]:
        if bits not in cache:
            with pytest.MonkeyPatch.context() as mp:
                spec = presets.REAL_PRESETS[NAME]
                small = dataclasses.replace(
                    spec, config={**spec.config, **SMALL}, shard_bytes=1 << 20
                )
                mp.setitem(presets.REAL_PRESETS, NAME, small)
                q = None if bits == 16 else bits
                ckpt = synthesize(root / f"b{bits}", preset=NAME, layers=LAYERS, quantize=q)
            cache[bits] = (ckpt, pack(ckpt, root / f"b{bits}-store", progress=False))
        return cache[bits]

    return get


def test_preset_carries_the_published_shapes_without_writing() -> None:
    cfg = make_config(None, NAME)
    assert cfg["model_type"] == "qwen3_5_moe" and cfg["num_hidden_layers"] == 60
    assert (cfg["hidden_size"], cfg["num_experts"], cfg["num_experts_per_tok"]) == (4096, 512, 10)
    assert (cfg["moe_intermediate_size"], cfg["vocab_size"]) == (1024, 248320)
    assert cfg["full_attention_interval"] == 4
    cut = make_config(None, NAME, layers=4)
    synth = cut["synth"]
    assert (synth["published_model"], synth["published_layers"]) == ("Qwen/Qwen3.5-397B-A17B", 60)
    assert synth["layers"] == 4 and cut["num_hidden_layers"] == 4
    make = TensorMaker(cut, 0, RoutingKnobs())
    for bits in (None, 4):
        groups, _ = stacked.stacked_groups(cut, make, bits)  # the plan; no tensor is generated
        specs = {t.name: t for g in groups for t in g.tensors}
        shape = {n: t.shape for n, t in specs.items()}
        packed = 1 if bits is None else 32 // bits  # values per stored element
        assert shape["language_model.model.embed_tokens.weight"] == (248320, 4096 // packed)
        assert shape["language_model.lm_head.weight"] == (248320, 4096 // packed)
        for layer in range(4):
            mlp = f"{LM}.{layer}.mlp"
            assert shape[f"{mlp}.switch_mlp.gate_proj.weight"] == (512, 1024, 4096 // packed)
            assert shape[f"{mlp}.switch_mlp.down_proj.weight"] == (512, 4096, 1024 // packed)
            assert shape[f"{mlp}.shared_expert.up_proj.weight"] == (1024, 4096 // packed)
            assert shape[f"{mlp}.shared_expert_gate.weight"][0] == 1  # one shared expert
            # The router: 512 outputs (mlx-lm keeps it at 8 bits in a 4-bit checkpoint).
            assert shape[f"{mlp}.gate.weight"] == (512, 4096 // (1 if bits is None else 4))
        # 3 Gated DeltaNet layers (64 value heads x 128, 16 key heads x 128), then attention.
        for layer in range(3):
            attn = f"{LM}.{layer}.linear_attn"
            assert shape[f"{attn}.in_proj_qkv.weight"][0] == 2 * 16 * 128 + 64 * 128
            assert shape[f"{attn}.A_log"] == (64,) and specs[f"{attn}.A_log"].dtype == "F32"
            assert shape[f"{attn}.conv1d.weight"] == (2 * 16 * 128 + 64 * 128, 4, 1)
            assert not any(n.startswith(f"{LM}.{layer}.self_attn.") for n in shape)
        assert shape[f"{LM}.3.self_attn.q_proj.weight"][0] == 2 * 32 * 256  # gated: q and gate
        assert shape[f"{LM}.3.self_attn.k_proj.weight"][0] == 2 * 256
        assert not any(n.startswith(f"{LM}.3.linear_attn.") for n in shape)
        if bits == 4:  # one layer's experts at 4 bits: the ~3.6 GB the docstring warns of
            experts = sum(t.nbytes for n, t in specs.items() if f"{LM}.0.mlp.switch_mlp." in n)
            assert 3.4e9 < experts < 3.8e9


def test_layers_below_the_attention_interval_are_refused() -> None:
    for n in (1, 3):
        with pytest.raises(CheckpointError, match=r"needs at least 4 layers.*N >= 4"):
            make_config(None, NAME, layers=n)
    assert make_config(None, NAME, layers=5)["num_hidden_layers"] == 5


def test_preset_of_a_family_that_does_not_stream_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spec = presets.REAL_PRESETS[NAME]
    # A dense family (no stacked experts in mlx-lm): refused before anything is built.
    dense = dataclasses.replace(spec, config={**spec.config, "model_type": "llama"})
    monkeypatch.setitem(presets.REAL_PRESETS, NAME, dense)
    with pytest.raises(CheckpointError, match="cannot stream llama models"):
        synthesize(tmp_path / "q", preset=NAME, layers=4)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bits", [16, 4])
def test_engine_decodes_the_written_checkpoint_as_mlx_lm_does(
    built: Callable[[int], tuple[Path, Store]], bits: int
) -> None:
    ckpt, store = built(bits)
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model_type"] == "qwen3_5_moe" and config["num_hidden_layers"] == LAYERS
    assert config["synth"]["published_model"] == "Qwen/Qwen3.5-397B-A17B"
    assert ("quantization" in config) == (bits == 4)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded, as downloads are
    assert store.bits == bits and len(store.layers) == LAYERS and store.num_experts == 32
    ref = generate(load_reference(ckpt), PROMPT, N_NEW, keep_logits=True)
    for prefetch in ("none", "next_layer"):
        with Engine(store, EngineConfig(prefetch=prefetch)) as engine:
            gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        assert gen.tokens == ref.tokens
        diff = max(float(np.abs(a - b).max()) for a, b in zip(gen.logits, ref.logits, strict=True))
        assert diff <= TOL, f"max |dlogit| = {diff}"


def test_long_generation_stays_finite_and_follows_the_planted_walk(
    built: Callable[[int], tuple[Path, Store]],
) -> None:
    """The Gated DeltaNet init (A_log, dt_bias, conv) keeps a recurrent state bounded: logits
    stay finite over a long decode, and the planted lm_head walk survives 5 hybrid layers."""
    ckpt, _ = built(4)
    plan = RoutingPlan.from_config(json.loads((ckpt / "config.json").read_text()))
    succ = plan.successor()
    start = int(plan.cycle[0])
    gen = generate(load_reference(ckpt), [start], 96, keep_logits=True)
    assert all(bool(np.isfinite(lg).all()) for lg in gen.logits)
    seq = [start, *gen.tokens]
    follows = np.mean([succ.get(a) == b for a, b in itertools.pairwise(seq)])
    assert follows > 0.9, follows


def test_routing_is_planted_as_the_other_presets_plant_it(
    built: Callable[[int], tuple[Path, Store]],
) -> None:
    ckpt, _ = built(16)
    config = json.loads((ckpt / "config.json").read_text())
    plan = RoutingPlan.from_config(config)
    w: dict[str, mx.array] = {}
    for f in ckpt.glob("*.safetensors"):
        w |= mx.load(str(f))
    bf16 = lambda a: mx.array(a).astype(mx.bfloat16)  # noqa: E731
    for layer in range(LAYERS):
        assert mx.array_equal(w[f"{LM}.{layer}.mlp.gate.weight"], bf16(plan.router(layer)))
    assert mx.array_equal(w["language_model.model.embed_tokens.weight"], bf16(plan.embedding()))
    assert mx.array_equal(w["language_model.lm_head.weight"], bf16(plan.lm_head()))
    assert w[f"{LM}.0.linear_attn.A_log"].dtype == mx.float32  # mlx-lm keeps it float32
    assert bool(mx.all(w[f"{LM}.4.linear_attn.norm.weight"] == 1))


def test_run_and_probe_work_on_the_store(
    built: Callable[[int], tuple[Path, Store]], capsys: pytest.CaptureFixture[str]
) -> None:
    _, store = built(4)
    assert main(["run", str(store.root), "--prompt-ids", "2,3,4", "--max-tokens", "3"]) == 0
    capsys.readouterr()
    assert main(["probe", str(store.root), "--warm", "--no-quality", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["decode_tok_s"] > 0


def test_a_tensor_without_a_rule_is_refused(
    small_preset: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def with_mystery(config: dict, **kw: object):  # type: ignore[no-untyped-def]
        model = build_skeleton(config, **kw)  # type: ignore[arg-type]
        model.language_model.model.layers[1].linear_attn.mystery = mx.zeros((8,))
        return model

    monkeypatch.setattr(stacked, "build_skeleton", with_mystery)
    with pytest.raises(
        CheckpointError, match=r"no rule to generate .*layers\.1\.linear_attn\.myst"
    ):
        synthesize(tmp_path / "q", preset=NAME, layers=4, quantize=4)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_synth_cli_builds_the_preset_at_8_bits(
    small_preset: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "q8"
    argv = ["synth", str(out), "--preset", NAME, "--family", "qwen3_5_moe", "--layers", "4"]
    assert main([*argv, "--quantize", "8", "--progress", "off"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["synth"]["layers"] == 4
    assert config["full_attention_interval"] == 4  # the published 3:1 pattern, kept
    model = load_reference(out)
    logits = model(mx.array([PROMPT]))
    assert logits.shape == (1, len(PROMPT), 512) and bool(mx.all(mx.isfinite(logits)))
    assert main(["synth", str(tmp_path / "x"), "--preset", NAME, "--layers", "2"]) == 1
    assert "needs at least 4 layers" in capsys.readouterr().err
