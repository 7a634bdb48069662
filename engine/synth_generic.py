"""A tiny synthetic checkpoint for any mlx-lm MoE family, in mlx-community layout.

The model is mlx-lm's own, built from a small config (`TINY`: only what the family's ModelArgs
needs beyond the shared base); its weights are mlx-lm's seeded random init, except the planted
ones (`engine.synth_routing`): embedding, lm_head and every router get the routing structure
(popularity skew, topic runs, cross-layer predictability) where their shapes allow. The saved
tensors are the model's own parameter names with stacked experts, which is exactly what
`mlx_lm convert` writes, so pack reads them with no per-family key table. The families with
known HF per-expert names are written in HF layout by `engine.synth` instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import tomli_w
from mlx.utils import tree_flatten

from engine.errors import CheckpointError, StoreExists, UnsupportedModel
from engine.families import _router, build_skeleton, experts_count, get_experts, moe_blocks
from engine.synth import probe_suite, write_tokenizer
from engine.synth_routing import RoutingKnobs, RoutingPlan

E, K, H, V = 8, 2, 64, 256  # experts, top-k, hidden, vocab: tiny, and 64 fits every quant group

# Keys shared by most families' ModelArgs; `from_dict` drops the ones a family does not take.
BASE: dict[str, Any] = {
    "hidden_size": H,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": V,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 512,
    "num_experts": E,
    "num_local_experts": E,
    "n_routed_experts": E,
    "moe_num_experts": E,
    "num_experts_per_tok": K,
    "moe_topk": K,
    "moe_top_k": K,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 64,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "norm_topk_prob": True,
    "rope_scaling": None,
}

_MLA = {
    "q_lora_rank": 32,
    "kv_lora_rank": 32,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 16,
    "v_head_dim": 16,
}
_GROUPED = {"n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0, "n_shared_experts": 1}

# Per family: the config keys its ModelArgs needs on top of BASE (real HF key names).
TINY: dict[str, dict[str, Any]] = {
    "qwen3_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "qwen2_moe": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "olmoe": {"intermediate_size": 64},
    "mixtral": {"intermediate_size": 64},
    "deepseek_v3": {
        **_MLA,
        **_GROUPED,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
    },
    "qwen3_next": {
        "linear_num_value_heads": 4,
        "linear_num_key_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "partial_rotary_factor": 0.25,
        "full_attention_interval": 2,
    },
    "gpt_oss": {
        "num_hidden_layers": 2,
        "sliding_window": 8,
        "layer_types": None,
        "intermediate_size": 64,
        "rope_scaling": None,
    },
    "glm4_moe": {
        **_GROUPED,
        "first_k_dense_replace": 1,
        "use_qk_norm": True,
        "partial_rotary_factor": 0.5,
    },
    "minimax": {"intermediate_size": 64, "shared_intermediate_size": 0, "rotary_dim": 8},
    "phimoe": {"intermediate_size": 64},
    "granitemoe": {
        "intermediate_size": 64,
        "logits_scaling": 1.0,
        "attention_multiplier": 0.25,
        "embedding_multiplier": 1.0,
        "residual_multiplier": 1.0,
    },
    "ernie4_5_moe": {
        "use_bias": False,
        "moe_k": K,
        "moe_layer_start_index": 0,
        "moe_intermediate_size": 64,
    },
    "dots1": {**_GROUPED, "first_k_dense_replace": 1},
    "bailing_moe": {"num_shared_experts": 1, "first_k_dense_replace": 1, "use_qk_norm": True},
    "Klear": {"mlp_only_layers": [], "decoder_sparse_step": 1, "n_shared_experts": 1},
    "mellum": {
        "sliding_window": 8,
        "layer_types": ["full_attention", "sliding_attention"],
        "rope_parameters": {
            "full_attention": {"rope_theta": 10000.0},
            "sliding_attention": {"rope_theta": 10000.0},
        },
    },
    "hunyuan": {
        "num_shared_expert": 1,
        "use_mixed_mlp_moe": True,
        "use_qk_norm": True,
        "use_cla": False,
        "cla_share_factor": 1,
        "moe_intermediate_size": 64,
        "rope_scaling": {"alpha": 1.0, "factor": 1.0, "type": "dynamic"},
    },
    "lfm2_moe": {
        "use_expert_bias": True,
        "num_dense_layers": 1,
        "norm_eps": 1e-5,
        "conv_bias": False,
        "conv_L_cache": 3,
        "num_hidden_layers": 3,
        "full_attn_idxs": [2],
    },
    "jamba": {
        "attn_layer_offset": 1,
        "attn_layer_period": 2,
        "expert_layer_offset": 0,
        "expert_layer_period": 1,
        "mamba_d_conv": 4,
        "mamba_d_state": 8,
        "mamba_expand": 2,
        "intermediate_size": 64,
    },
    "granitemoehybrid": {
        "layer_types": ["mamba", "attention"],
        "logits_scaling": 1.0,
        "attention_multiplier": 0.25,
        "embedding_multiplier": 1.0,
        "residual_multiplier": 1.0,
        "shared_intermediate_size": 64,
        "intermediate_size": 64,
        "mamba_n_heads": 4,
        "mamba_d_head": 16,
        "mamba_proj_bias": False,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "mamba_n_groups": 1,
        "mamba_conv_bias": True,
    },
    "exaone_moe": {
        "num_shared_experts": 1,
        "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention"],
        "is_moe_layer": [True, True],
    },
}

# phixtral (Phi-2 MoE) names its sizes its own way; its experts are SwitchMLP (fc1, gelu, fc2).
TINY["phixtral"] = {
    "num_vocab": V,
    "model_dim": H,
    "num_heads": 4,
    "num_layers": 2,
    "rotary_dim": 8,
    "num_local_experts": E,
}
# nemotron_h: Mamba2 + attention + MoE layers by pattern; experts are SwitchMLP with relu^2.
TINY["nemotron_h"] = {
    "hybrid_override_pattern": ["M", "E", "*", "E"],
    "mamba_num_heads": 4,
    "mamba_head_dim": 16,
    "mamba_proj_bias": False,
    "ssm_state_size": 8,
    "conv_kernel": 4,
    "n_groups": 1,
    "mlp_bias": False,
    "layer_norm_epsilon": 1e-5,
    "use_bias": False,
    "use_conv_bias": True,
    "n_shared_experts": 1,
    "moe_shared_expert_intermediate_size": 64,
    "routed_scaling_factor": 1.0,
    "n_group": 1,
    "topk_group": 1,
}
# ernie4_5_moe with use_bias: a second family whose expert projections carry biases.
TINY["ernie4_5_moe"]["use_bias"] = True

# Families whose config.json nests the text model (vision-language / multimodal wrappers).
NESTED: dict[str, str] = {"qwen3_5_moe": "qwen3_next", "llama4": "", "qwen3_vl_moe": "qwen3_moe"}
TINY["qwen3_5_moe"] = TINY["qwen3_next"] | {"layer_types": None}
TINY["llama4"] = {
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "intermediate_size_mlp": 128,
    "num_experts_per_tok": 1,
    "interleave_moe_layer_step": 1,
    "attention_chunk_size": 8,
    "use_qk_norm": True,
    "floor_scale": 8192,
    "attn_scale": 0.1,
    "attn_temperature_tuning": 4,
}
TINY["qwen3_vl_moe"] = TINY["qwen3_moe"] | {
    "rope_scaling": {"mrope_section": [2, 1, 1], "rope_type": "default"}
}


def synth_families() -> tuple[str, ...]:
    return tuple(TINY)


def make_config(family: str, seed: int = 0) -> dict[str, Any]:
    if family not in TINY:
        raise UnsupportedModel(
            f"no tiny config for family {family!r}; choose one of {', '.join(TINY)}"
        )
    text = {"model_type": NESTED.get(family) or family, **BASE, **TINY[family]}
    if family in NESTED:
        cfg: dict[str, Any] = {"model_type": family, "text_config": text}
        cfg["tie_word_embeddings"] = False
    else:
        cfg = text
    cfg["synth"] = {"family": family, "preset": "tiny", "seed": seed, "layout": "mlx"}
    return cfg


def _plant(model: nn.Module, plan: RoutingPlan) -> None:
    """Embedding, lm_head and routers carry the planted routing where the shapes fit."""
    params = dict(tree_flatten(model.parameters()))
    updates: list[tuple[str, mx.array]] = []
    for name, arr in params.items():
        if name.endswith("embed_tokens.weight") and arr.shape == (plan.vocab, plan.hidden):
            updates.append((name, mx.array(plan.embedding())))
        elif name.endswith("lm_head.weight") and arr.shape == (plan.vocab, plan.hidden):
            updates.append((name, mx.array(plan.lm_head())))
    model.load_weights(updates, strict=False)
    for layer, _, block in moe_blocks(model):
        router = _router(block, experts_count(get_experts(block)))
        if router["weight"].shape == (plan.num_experts, plan.hidden):
            router.weight = mx.array(plan.router(layer))


def build_model(family: str, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """mlx-lm's model for the family's tiny config, seeded, routing planted; and the config."""
    config = make_config(family, seed)
    mx.random.seed(seed)
    model = build_skeleton(config, source=f"tiny {family} config")
    plan = RoutingPlan(hidden=H, vocab=V, num_experts=E, seed=seed, knobs=RoutingKnobs())
    _plant(model, plan)
    mx.eval(model.parameters())
    return model, config


def synthesize(out: Path, family: str, seed: int = 0, force: bool = False, bits: int = 16) -> Path:
    """Write the tiny checkpoint (mlx-community layout; `bits` < 16 quantizes it the way
    `mlx_lm convert -q` does) atomically to `out`, with tokenizer and probe suite."""
    from mlx_lm.utils import quantize_model

    out = Path(out)
    if out.exists() and not force:
        raise StoreExists(f"{out}: already exists; pass --force to replace it")
    model, config = build_model(family, seed)
    if bits < 16:
        model, config = quantize_model(model, config, group_size=64, bits=bits)
    weights = dict(tree_flatten(model.parameters()))
    plan = RoutingPlan(hidden=H, vocab=V, num_experts=E, seed=seed, knobs=RoutingKnobs())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        suite = probe_suite(plan, "tiny", seed)
        (tmp / "probe_suite.toml").write_bytes(tomli_w.dumps(suite).encode())
        write_tokenizer(tmp, V)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not any(
        n.endswith(("switch_mlp.up_proj.weight", "experts.up_proj.weight", "switch_mlp.fc1.weight"))
        for n in weights
    ):
        raise CheckpointError(f"{out}: the {family} model has no stacked experts to stream")
    return out


# Every family `engine synth` builds (HF layout for engine.synth's, mlx layout for the rest).
SYNTH_FAMILIES = tuple(TINY)


def synthesize_family(
    out: Path,
    family: str,
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    knobs: RoutingKnobs | None = None,
    progress: bool | None = None,
) -> Path:
    """`engine.synth.synthesize` for its HF-layout families, else the tiny mlx-layout model."""
    from engine import synth

    if family in synth.SYNTH_FAMILIES:
        return synth.synthesize(out, family, preset, seed, force, knobs, progress)
    if preset != "tiny":
        raise CheckpointError(
            f"family {family!r} is synthesized at preset 'tiny' only, not {preset!r}; "
            f"presets for it come with engine/synth.py's families ({', '.join(synth.PRESETS)})"
        )
    return synthesize(out, family, seed=seed, force=force)
