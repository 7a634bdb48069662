"""Real-shape synth presets carry the published models' per-layer shapes (checked on the lazy
mlx-lm skeleton: no weights are built), record their provenance, and refuse what cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from engine.cli import main
from engine.errors import CheckpointError
from engine.synth.hf import make_config, synthesize, tensor_plan
from engine.synth.presets import REAL_PRESETS
from engine.synth.quant import quantized_skeleton

# The numbers issue 16 states for each published model, plus the attention shapes of its
# published config: (hidden, experts, top_k, expert_inter, layers, vocab).
PUBLISHED = {
    "qwen3-30b-a3b": (2048, 128, 8, 768, 48, 151936),
    "olmoe-1b-7b": (2048, 64, 8, 1024, 16, 50304),
    "mixtral-8x7b": (4096, 8, 2, 14336, 32, 32000),
    "kimi-k2": (7168, 384, 8, 2048, 61, 163840),
}
# (layer, expert projection name) of one routed expert's gate projection, per preset.
EXPERT = {
    "qwen3-30b-a3b": "model.layers.{l}.mlp.experts.{e}.gate_proj.weight",
    "olmoe-1b-7b": "model.layers.{l}.mlp.experts.{e}.gate_proj.weight",
    "mixtral-8x7b": "model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight",
    "kimi-k2": "model.layers.{l}.mlp.experts.{e}.gate_proj.weight",
}
ROUTER = {
    "qwen3-30b-a3b": "model.layers.{l}.mlp.gate.weight",
    "olmoe-1b-7b": "model.layers.{l}.mlp.gate.weight",
    "mixtral-8x7b": "model.layers.{l}.block_sparse_moe.gate.weight",
    "kimi-k2": "model.layers.{l}.mlp.gate.weight",
}
# Published attention projections (out, in) of one layer.
ATTENTION = {
    "qwen3-30b-a3b": {
        "q_proj": (32 * 128, 2048),
        "k_proj": (4 * 128, 2048),
        "o_proj": (2048, 4096),
    },
    "olmoe-1b-7b": {"q_proj": (2048, 2048), "k_proj": (2048, 2048), "o_proj": (2048, 2048)},
    "mixtral-8x7b": {"q_proj": (4096, 4096), "k_proj": (8 * 128, 4096), "o_proj": (4096, 4096)},
    "kimi-k2": {  # MLA: q_lora 1536, kv_lora 512, nope 128 + rope 64, v 128, 64 heads
        "q_a_proj": (1536, 7168),
        "q_b_proj": (64 * 192, 1536),
        "kv_a_proj_with_mqa": (512 + 64, 7168),
        "kv_b_proj": (64 * (128 + 128), 512),
        "o_proj": (7168, 64 * 128),
    },
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_carry_published_shapes(name: str) -> None:
    hidden, experts, top_k, inter, layers, vocab = PUBLISHED[name]
    full = make_config(None, name)
    assert full["num_hidden_layers"] == layers and full["num_experts_per_tok"] == top_k
    cfg = make_config(None, name, layers=2)  # the shapes per layer do not depend on depth
    shapes = dict(tensor_plan(cfg))
    moe = 1  # layer 1 is MoE in every preset (kimi's layer 0 is dense)
    assert shapes["model.embed_tokens.weight"] == (vocab, hidden)
    assert shapes["lm_head.weight"] == (vocab, hidden)
    assert shapes[ROUTER[name].format(l=moe)] == (experts, hidden)
    assert shapes[EXPERT[name].format(l=moe, e=experts - 1)] == (inter, hidden)
    assert EXPERT[name].format(l=moe, e=experts) not in shapes  # exactly `experts` of them
    for proj, shape in ATTENTION[name].items():
        assert shapes[f"model.layers.{moe}.self_attn.{proj}.weight"] == shape, proj
    assert cfg["synth"]["published_layers"] == layers and cfg["synth"]["layers"] == 2
    assert cfg["synth"]["published_model"] == REAL_PRESETS[name].model


def test_kimi_k2_layout_first_layer_dense_one_shared_expert() -> None:
    shapes = dict(tensor_plan(make_config(None, "kimi-k2", layers=2)))
    assert shapes["model.layers.0.mlp.gate_proj.weight"] == (18432, 7168)  # dense layer 0
    assert not any(n.startswith("model.layers.0.mlp.experts.") for n in shapes)
    assert shapes["model.layers.1.mlp.shared_experts.up_proj.weight"] == (2048, 7168)
    assert shapes["model.layers.1.mlp.gate.e_score_correction_bias"] == (384,)


def test_quantized_layout_at_real_shape_without_building_weights() -> None:
    # The lazy skeleton gives the quantized checkpoint's exact tensors for the full width.
    model, qcfg = quantized_skeleton(make_config(None, "qwen3-30b-a3b", layers=1), 4, 64)
    params = dict(tree_flatten(model.parameters()))
    w = params["model.layers.0.mlp.switch_mlp.gate_proj.weight"]
    s = params["model.layers.0.mlp.switch_mlp.gate_proj.scales"]
    assert (w.shape, w.dtype) == ((128, 768, 2048 * 4 // 32), mx.uint32)
    assert (s.shape, s.dtype) == ((128, 768, 2048 // 64), mx.bfloat16)
    assert qcfg["quantization"]["bits"] == 4 and qcfg["quantization"]["group_size"] == 64
    assert qcfg["quantization"]["model.layers.0.mlp.gate"]["bits"] == 8  # qwen3_moe's router


def test_bad_preset_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="needs at least 2 layer"):
        make_config(None, "kimi-k2", layers=1)  # only the dense layer: no experts to stream
    with pytest.raises(CheckpointError, match="needs at least 1 layer"):
        make_config(None, "olmoe-1b-7b", layers=0)
    with pytest.raises(CheckpointError, match="is a mixtral model"):
        make_config("qwen3_moe", "mixtral-8x7b")
    with pytest.raises(CheckpointError, match="preset tiny needs --family"):
        make_config(None, "tiny")
    with pytest.raises(CheckpointError, match="--quantize 3"):
        synthesize(tmp_path / "q", "qwen3_moe", "tiny", quantize=3)
    assert not list(tmp_path.iterdir())


def test_cli_layers_on_a_toy_preset_records_depth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m"
    assert main(["synth", str(out), "--family", "olmoe", "--layers", "2"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert not any(".layers.2." in n for n in index["weight_map"])
    assert main(["synth", str(tmp_path / "k"), "--preset", "kimi-k2", "--layers", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least 2 layer" in err
