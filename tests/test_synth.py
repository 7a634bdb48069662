"""synth: real HF-layout checkpoints that mlx-lm loads strictly, with planted routing."""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load_model

from engine.cli import main
from engine.errors import CheckpointError, StoreExists
from engine.synth.hf import PRESETS, SYNTH_FAMILIES, make_config, synthesize, tensor_plan
from engine.synth.routing import (
    RoutingKnobs,
    RoutingPlan,
    lru_hit_rate,
    record_routing,
    routing_stats,
)

# One representative per-expert tensor name per family, as the real HF checkpoints spell it.
EXPERT_KEY = {
    "qwen3_moe": "model.layers.0.mlp.experts.15.gate_proj.weight",
    "qwen2_moe": "model.layers.0.mlp.experts.15.down_proj.weight",
    "mixtral": "model.layers.0.block_sparse_moe.experts.15.w2.weight",
    "deepseek_v3": "model.layers.1.mlp.experts.15.up_proj.weight",  # layer 0 is dense
    "olmoe": "model.layers.2.mlp.experts.15.up_proj.weight",
}


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_tiny_loads_strictly_in_mlx_lm(family: str, tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint(family)
    model, config = load_model(path, strict=True)
    assert config["model_type"] == family
    assert config["synth"]["family"] == family and config["synth"]["seed"] == 0
    # The model runs: one forward pass gives finite logits of the vocab's width.
    model.set_dtype(mx.float32)
    logits = model(mx.array([[2, 3, 4]]))
    assert logits.shape == (1, 3, config["vocab_size"])
    assert bool(mx.all(mx.isfinite(logits)))


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_files_index_and_names(family: str, tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint(family)
    config = json.loads((path / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in path.glob("model-*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(set(index["weight_map"].values())) == shards
    total, names = 0, set()
    for shard in shards:
        tensors = mx.load(str(path / shard))
        names |= set(tensors)
        total += sum(t.nbytes for t in tensors.values())
        assert all(index["weight_map"][n] == shard for n in tensors)
    assert names == set(index["weight_map"]) and index["metadata"]["total_size"] == total
    assert EXPERT_KEY[family] in names
    assert not any("switch_mlp" in n for n in names)  # per-expert HF layout, not stacked
    expert = mx.load(str(path / index["weight_map"][EXPERT_KEY[family]]))[EXPERT_KEY[family]]
    assert expert.dtype == mx.bfloat16 and expert.shape[-1] % 128 == 0


def test_deepseek_uses_hf_mla_and_kimi_routing(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("deepseek_v3")
    c = json.loads((path / "config.json").read_text())
    assert (c["n_shared_experts"], c["n_group"], c["topk_group"]) == (1, 1, 1)
    assert (c["topk_method"], c["scoring_func"], c["first_k_dense_replace"]) == (
        "noaux_tc",
        "sigmoid",
        1,
    )
    shapes = dict(tensor_plan(c))
    kv_b = shapes["model.layers.1.self_attn.kv_b_proj.weight"]
    heads, nope, v = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"]
    assert kv_b == (heads * (nope + v), c["kv_lora_rank"])
    assert not any("embed_q" in n or "unembed_out" in n for n in shapes)
    assert "model.layers.1.mlp.shared_experts.down_proj.weight" in shapes
    bias_name = "model.layers.1.mlp.gate.e_score_correction_bias"
    index = json.loads((path / "model.safetensors.index.json").read_text())
    bias = mx.load(str(path / index["weight_map"][bias_name]))[bias_name]
    assert bias.dtype == mx.float32


def test_probe_suite_written(tiny_checkpoint: Callable[[str], Path]) -> None:
    path = tiny_checkpoint("qwen3_moe")
    with open(path / "probe_suite.toml", "rb") as f:
        suite = tomllib.load(f)
    p = PRESETS["tiny"]
    assert suite["seed"] == 0 and len(suite["prompts"]) == p.prompts
    for prompt in suite["prompts"]:
        assert len(prompt["ids"]) == p.prompt_len and prompt["decode_tokens"] == p.decode_tokens
        assert all(0 <= i < p.vocab for i in prompt["ids"])


def test_refuses_existing_dir_unless_force(tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(StoreExists, match="--force"):
        synthesize(out, "mixtral", "tiny")
    assert (out / "stale.txt").exists()  # refused means untouched
    synthesize(out, "mixtral", "tiny", force=True)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "m"]  # no temp dir left behind


def test_rejects_unknown_family_and_preset(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="qwen3_moe"):
        synthesize(tmp_path / "a", "llama", "tiny")
    with pytest.raises(CheckpointError, match="tiny, small, bench"):
        synthesize(tmp_path / "b", "qwen3_moe", "huge")
    assert not list(tmp_path.iterdir())


def test_cli_synth_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--family", "qwen2_moe", "--seed", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["synth"]["seed"] == 3
    assert main(["synth", str(out), "--family", "qwen2_moe"]) == 1
    assert "--force" in capsys.readouterr().err


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", "deepseek_v3", "tiny", seed=7)
    b = synthesize(tmp_path / "b", "deepseek_v3", "tiny", seed=7)
    c = synthesize(tmp_path / "c", "deepseek_v3", "tiny", seed=8)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    shard = "model-00002-of-00003.safetensors"
    assert (a / shard).read_bytes() != (c / shard).read_bytes()


def test_lm_head_plants_one_long_decode_cycle() -> None:
    # Hand-checkable: with no layers in between, argmax(lm_head @ embedding(v)) must be succ(v),
    # and following succ from any token visits the whole vocabulary before repeating.
    plan = RoutingPlan(hidden=128, vocab=512, num_experts=16, seed=0, knobs=RoutingKnobs())
    nxt = np.argmax(plan.embedding() @ plan.lm_head().T, axis=-1)  # [V]
    v, seen = 2, set()
    while v not in seen:
        seen.add(v)
        v = int(nxt[v])
    assert len(seen) == 512 - 2  # every token but bos/eos, which decoding never emits
    # Runs of the walk stay in one topic for many tokens while the token class alternates.
    topics, classes = np.divmod(plan.topic[plan.cycle], plan.n_classes)
    assert np.mean(topics[1:] == topics[:-1]) > 0.9
    assert np.all(classes[1:] != classes[:-1])


def test_lru_hit_rate_by_hand() -> None:
    # capacity 2: [1,2] miss miss; [1,3] hit(1) miss(3, evicts 2); [2,3] miss(2) hit(3)
    assert lru_hit_rate([[[1, 2], [1, 3], [2, 3]]], capacity=2) == pytest.approx(2 / 6)


def test_knobs_reach_config(tmp_path: Path) -> None:
    cfg = make_config("qwen3_moe", "tiny", 5, RoutingKnobs(skew=2.0, drift=0.1))
    assert cfg["synth"]["skew"] == 2.0 and cfg["synth"]["drift"] == 0.1


def test_tiny_routing_figures(tiny_checkpoint: Callable[[str], Path]) -> None:
    s = routing_stats(tiny_checkpoint("qwen3_moe"))
    assert s["decode_distinct"] > 0.9  # greedy decode walks the cycle, no repetition loop
    # tiny has 16 experts, top-4: a 25% cache holds exactly one token's experts and a
    # (topic, class) pool is exactly k experts, so routing is nearly a function of the pool:
    # hit rate ~ previous-token reuse (~0.46) and next-layer recall near 1. The bounds are
    # therefore wider than the small/bench targets, but random routing (hit ~0.25, reuse 1x,
    # recall 0.25) or a broken plant fails every one of them.
    assert 0.38 <= s["hit_rate"] <= 0.8, s
    assert 1.5 <= s["reuse_vs_chance"] <= 3.0, s
    assert 0.6 <= s["next_layer_recall"] <= 0.995, s


def test_routing_structure_is_tunable(tmp_path: Path) -> None:
    # Switching off skew and topics must collapse locality towards chance; that is what the
    # knobs are for, and it shows the planted structure (not luck) makes the default figures.
    flat = RoutingKnobs(skew=0.0, topic_strength=0.0)
    s = routing_stats(synthesize(tmp_path / "flat", "mixtral", "tiny", knobs=flat))
    assert s["reuse_vs_chance"] < 1.4, s


def test_greedy_decode_follows_the_planted_walk(tiny_checkpoint: Callable[[str], Path]) -> None:
    # Through the real (noisy) layers greedy decoding still steps to succ(current) almost
    # always: that is what keeps topic persistence alive during decode.
    path = tiny_checkpoint("deepseek_v3")
    p = PRESETS["tiny"]
    succ = RoutingPlan.from_config(json.loads((path / "config.json").read_text())).successor()
    rec = record_routing(path)
    steps = [(a, b) for seq in rec.decoded for a, b in itertools.pairwise(seq)]
    assert len(steps) == p.prompts * p.decode_tokens
    assert np.mean([succ[a] == b for a, b in steps]) > 0.9


def test_plan_from_a_non_synthetic_config_is_refused() -> None:
    config = make_config("qwen3_moe", "tiny")
    del config["synth"]
    with pytest.raises(CheckpointError, match="not a synthetic checkpoint"):
        RoutingPlan.from_config(config)
