"""`synth`: write a real HF-layout MoE checkpoint with random weights and planted routing.

The tensor list comes from mlx-lm itself: `build_skeleton(config)` gives the model with lazy
parameters, whose names/shapes are the post-sanitize ones; stacked experts are mapped back to
per-expert HF names (`Family.hf_expert_key`) and deepseek's MLA `embed_q`/`unembed_out` back to
HF's `kv_b_proj`. Tensors are generated per name from a seeded RNG (order-independent, so files
are byte-identical for a seed) and streamed into shards a block of rows at a time
(`engine.synth.write`: bounded RAM), into a temp dir renamed into place at the end. With
`quantize` the checkpoint is written in mlx-community's quantized layout instead
(`engine.synth.quant`). Families whose HF names are unknown here (e.g. qwen3.5's `qwen3_5_moe`)
are written in mlx-community layout, bf16 or quantized (`engine.synth.stacked`). Presets live
in `engine.synth.presets`, the planted routing structure in `engine.synth.routing`.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import tomli_w
from mlx.utils import tree_flatten

from engine.contract import HF_SYNTH_FAMILIES as SYNTH_FAMILIES  # the ones written in HF layout
from engine.errors import CheckpointError, EngineError, StoreExists
from engine.families import FAMILIES, build_skeleton
from engine.synth.presets import (
    ALL_PRESETS,
    KIMI_ROUTING,
    PRESETS,
    REAL_PRESETS,
    Preset,
    RealPreset,
    check_layers,
    real_config,
)
from engine.synth.routing import RoutingKnobs, RoutingPlan, depth_scale
from engine.synth.write import Group, Put, TensorSpec, row_chunks, write_shards
from engine.synth.write import progress as progress_bar
from engine.tmpdirs import make_tmp

__all__ = ["PRESETS", "REAL_PRESETS", "SYNTH_FAMILIES", "make_config", "synthesize"]

QUANT_BITS = (4, 8)
_KNOB_FIELDS = set(RoutingKnobs.__dataclass_fields__)


def _check_preset(name: str) -> Preset | RealPreset:
    if name in PRESETS:
        return PRESETS[name]
    if name in REAL_PRESETS:
        return REAL_PRESETS[name]
    raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(ALL_PRESETS)}")


def make_config(
    family: str | None,
    preset: str,
    seed: int = 0,
    knobs: RoutingKnobs | None = None,
    layers: int | None = None,
    *,
    runnable: bool = True,
) -> dict[str, Any]:
    """config.json for a family/preset with the family's real HF keys plus a `synth` record.

    family: required for the toy presets; a real-shape preset names its own (None = that one).
    layers: keep this many layers (None = the preset's depth). runnable=False: allow a preset
    whose family the engine cannot run yet (its routing plan can still be studied).
    """
    spec = _check_preset(preset)
    if isinstance(spec, RealPreset):
        return real_config(preset, spec, family, seed, knobs, layers, runnable)
    if family not in SYNTH_FAMILIES:
        what = f"unknown family {family!r}" if family else f"preset {preset} needs --family"
        raise CheckpointError(f"{what}; choose one of {', '.join(SYNTH_FAMILIES)}")
    p, knobs = spec, knobs or RoutingKnobs()
    arch = {
        "qwen3_moe": "Qwen3MoeForCausalLM",
        "mixtral": "MixtralForCausalLM",
        "deepseek_v3": "DeepseekV3ForCausalLM",
        "qwen2_moe": "Qwen2MoeForCausalLM",
        "olmoe": "OlmoeForCausalLM",
    }[family]
    cfg: dict[str, Any] = {
        "architectures": [arch],
        "model_type": family,
        "hidden_size": p.hidden,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "vocab_size": p.vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,  # lm_head plants the decode walk, embedding the routing
        "num_experts_per_tok": p.top_k,
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    if family == "qwen3_moe":
        cfg |= {
            "head_dim": p.head_dim,
            "num_experts": p.experts,
            "moe_intermediate_size": p.moe_inter,
            "intermediate_size": p.dense_inter,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,
            "attention_bias": False,
        }
    elif family == "qwen2_moe":
        cfg |= {
            "num_experts": p.experts,
            "moe_intermediate_size": p.moe_inter,
            "shared_expert_intermediate_size": p.moe_inter,
            "intermediate_size": p.dense_inter,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": False,
        }
    elif family == "mixtral":
        cfg |= {"num_local_experts": p.experts, "intermediate_size": p.moe_inter}
    elif family == "olmoe":  # every layer MoE; intermediate_size is the expert width
        cfg |= {
            "num_experts": p.experts,
            "intermediate_size": p.moe_inter,
            "norm_topk_prob": False,
            "head_dim": p.head_dim,
            "attention_bias": False,
        }
    else:  # deepseek_v3 in the Kimi K2 layout
        cfg |= {
            "n_routed_experts": p.experts,
            "n_shared_experts": 1,
            "moe_intermediate_size": p.moe_inter,
            "intermediate_size": p.dense_inter,
            **KIMI_ROUTING,
            "q_lora_rank": p.hidden // 2,
            "kv_lora_rank": p.hidden // 2,
            "qk_rope_head_dim": p.head_dim // 2,
            "qk_nope_head_dim": p.head_dim,
            "v_head_dim": p.head_dim,
            "num_key_value_heads": p.heads,
            "attention_bias": False,
        }
    if layers is not None:
        check_layers(preset, cfg, layers)
        cfg["num_hidden_layers"] = layers
    cfg["synth"] = {"family": family, "preset": preset, "seed": seed, **knobs.to_dict()}
    return cfg


# ---- tensor plan ---------------------------------------------------------------------------

_LAYER = re.compile(r"\.layers\.(\d+)\.")
# Layers add these to the residual stream: scaled by `drift` so the embedding dominates.
_OUTPUT_PROJ = re.compile(r"(o_proj|out_proj|down_proj|\.w2)\.weight$")
# Attention (and Gated DeltaNet's out_proj) mixes earlier tokens into the stream, which correlates
# consecutive tokens' routes beyond the planted topic persistence; it gets a smaller share of
# the drift.
_ATTN_SHARE = 0.25
# A shared expert is a second MLP output per layer; halving it keeps a layer's total drift (and
# so routing noise) comparable to families without one.
_SHARED_SHARE = 0.5
_ROUTER = re.compile(r"\.(mlp|block_sparse_moe)\.gate\.weight$")


def tensor_plan(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every tensor of the checkpoint, in file order."""
    fam = FAMILIES[config["model_type"]]
    model = build_skeleton(config)
    out: list[tuple[str, tuple[int, ...]]] = []
    for name, arr in tree_flatten(model.parameters()):
        shape = tuple(arr.shape)
        if ".switch_mlp." in name:
            block, rest = name.split(".switch_mlp.")
            proj, part = rest.split(".")
            out += [(fam.hf_expert_key(block, e, proj, part), shape[1:]) for e in range(shape[0])]
        elif name.endswith("self_attn.embed_q.weight"):  # [H, kv_lora, nope]
            heads, rank, nope = shape
            v_dim = config["v_head_dim"]
            out.append((name.replace("embed_q", "kv_b_proj"), (heads * (nope + v_dim), rank)))
        elif name.endswith("self_attn.unembed_out.weight"):
            continue  # folded into kv_b_proj above
        else:
            out.append((name, shape))

    def order(item: tuple[str, tuple[int, ...]]) -> tuple[int, str]:
        m = _LAYER.search(item[0])
        first = int(m.group(1)) if m else (-1 if "embed_tokens" in item[0] else 1 << 30)
        return first, item[0]

    return sorted(out, key=order)


class TensorMaker:
    """Generates each tensor from (seed, name) alone, so any order gives the same bytes."""

    def __init__(self, config: dict[str, Any], seed: int, knobs: RoutingKnobs) -> None:
        self.seed, self.knobs = seed, knobs
        self.plan = RoutingPlan.from_config(config)
        self.drift = knobs.drift * depth_scale(config)

    def __call__(self, name: str, shape: tuple[int, ...]) -> mx.array:
        if name.endswith("e_score_correction_bias"):
            # Routing bias stays float32 as in real DeepSeek-V3/Kimi checkpoints.
            return mx.zeros(shape, dtype=mx.float32)
        return mx.array(self._f32(name, shape)).astype(mx.bfloat16)

    def rows(self, name: str, lo: int, hi: int) -> mx.array:
        """Rows [lo, hi) of the embedding or lm_head (bf16), without building the whole one."""
        f = self.plan.embedding if is_vocab_tensor(name) == "embed" else self.plan.lm_head
        return mx.array(f(lo, hi)).astype(mx.bfloat16)

    def _f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if is_vocab_tensor(name) == "embed":
            return self.plan.embedding()
        if is_vocab_tensor(name) == "lm_head":
            return self.plan.lm_head()
        if _ROUTER.search(name):
            return self.plan.router(int(_LAYER.search(name).group(1)))  # type: ignore[union-attr]
        if "norm" in name.rsplit(".", 2)[-2]:
            return np.ones(shape, dtype=np.float32)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        std = 1.0 / np.sqrt(shape[-1])
        if _OUTPUT_PROJ.search(name) or name.endswith("shared_expert_gate.weight"):
            std *= self.drift
            if "o_proj" in name or "out_proj" in name:
                std *= _ATTN_SHARE
            elif "shared_expert" in name:
                std *= _SHARED_SHARE
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def is_vocab_tensor(name: str) -> str | None:
    """ "embed" / "lm_head" for the [vocab, hidden] tensors (written in row blocks), else None."""
    if name.endswith("embed_tokens.weight"):
        return "embed"
    if name.endswith("lm_head.weight"):
        return "lm_head"
    return None


def vocab_block(hidden: int) -> int:
    """Rows per block of a vocab tensor: ~16 MiB of float32 at a time."""
    return max(1, (16 << 20) // (4 * hidden))


def _hf_groups(plan: list[tuple[str, tuple[int, ...]]], make: TensorMaker) -> list[Group]:
    groups = []
    for name, shape in plan:
        dtype = "F32" if name.endswith("e_score_correction_bias") else "BF16"
        if is_vocab_tensor(name):

            def fill(put: Put, name: str = name, shape: tuple[int, ...] = shape) -> None:
                for lo, hi in row_chunks(shape[0], vocab_block(shape[1])):
                    put(name, lo, make.rows(name, lo, hi))

        else:

            def fill(put: Put, name: str = name, shape: tuple[int, ...] = shape) -> None:
                put(name, 0, make(name, shape))

        groups.append(Group((TensorSpec(name, shape, dtype),), fill))
    return groups


def probe_suite(plan: RoutingPlan, preset_name: str, seed: int) -> dict[str, Any]:
    """The default probes: prompts that follow the decode walk's topic runs."""
    preset = _check_preset(preset_name)
    ids = plan.prompts(preset.prompts, preset.prompt_len)
    return {
        "name": f"synth-{preset_name}",
        "seed": seed,
        "prompts": [{"ids": p, "decode_tokens": preset.decode_tokens} for p in ids],
    }


def write_tokenizer(out: Path, vocab: int) -> None:
    """A word-level tokenizer for the synthetic vocab ("<s>", "</s>", "w2", ...).

    Real checkpoints ship one, and `mlx_lm convert`/`load` need one; it also lets probes be text.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    words = {"<s>": 0, "</s>": 1} | {f"w{i}": i for i in range(2, vocab)}
    tok = Tokenizer(WordLevel(words, unk_token="<s>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(out / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<s>",
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def synthesize(
    out: Path,
    family: str | None = None,
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    knobs: RoutingKnobs | None = None,
    progress: bool | None = None,
    *,
    layers: int | None = None,
    quantize: int | None = None,
    group_size: int = 64,
) -> Path:
    """Write the checkpoint to `out` (atomically) and return `out`.

    layers: keep this many of the preset's layers. quantize: 4 or 8 = write mlx-community's
    quantized layout (what `mlx_lm convert -q --q-bits N` would write from the HF checkpoint).
    progress: show a rich progress bar; None = only when the model is over 1 GiB.
    """
    out = Path(out)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise CheckpointError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    config = make_config(family, preset, seed, knobs, layers)
    if quantize is not None and quantize not in QUANT_BITS:
        raise CheckpointError(
            f"--quantize {quantize}: choose one of {', '.join(map(str, QUANT_BITS))}"
        )
    if out.exists() and not force:
        raise StoreExists(f"{out}: already exists; pass --force to replace it")
    knobs = RoutingKnobs(**{k: v for k, v in config["synth"].items() if k in _KNOB_FIELDS})
    make = TensorMaker(config, seed, knobs)
    if config["model_type"] not in FAMILIES:  # HF names unknown: mlx-community layout
        from engine.synth.stacked import stacked_groups

        groups, out_config = stacked_groups(config, make, quantize, group_size)
        meta = {"format": "mlx"}
    elif quantize is None:
        groups, meta, out_config = _hf_groups(tensor_plan(config), make), {"format": "pt"}, config
    else:
        from engine.synth.quant import quantized_groups

        groups, out_config = quantized_groups(config, make, quantize, group_size)
        meta = {"format": "mlx"}
    total = sum(g.nbytes for g in groups)
    show = total > (1 << 30) if progress is None else progress
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # .<name>.<pid>-XXXX: a synth killed with -9 leaves it; the next synth removes it.
        tmp = make_tmp(out.parent, f".{out.name}.")
    except OSError as e:
        raise CheckpointError(f"{out}: cannot create it ({e}); is a parent a file?") from None
    try:
        with progress_bar(show, total, f"synth {preset}") as advance:
            index = write_shards(tmp, groups, _check_preset(preset).shard_bytes, meta, advance)
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if meta["format"] == "pt":
            (tmp / "config.json").write_text(json.dumps(out_config, indent=2) + "\n")
        else:  # mlx-lm's own writer: sorted keys, quantization_config mirrored, as convert does
            from mlx_lm.utils import save_config

            save_config(out_config, config_path=tmp / "config.json")
        (tmp / "probe_suite.toml").write_bytes(
            tomli_w.dumps(probe_suite(make.plan, preset, seed)).encode()
        )
        write_tokenizer(tmp, config["vocab_size"])
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        elif out.exists() or out.is_symlink():
            out.unlink()
        tmp.rename(out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError | RuntimeError) and not isinstance(e, EngineError):
            # mlx reports a failed write (e.g. a full disk) as RuntimeError
            raise CheckpointError(
                f"writing {out} failed ({e}); free disk space or check permissions. "
                "Nothing was left behind."
            ) from e
        raise
    return out
