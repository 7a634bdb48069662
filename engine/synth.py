"""`synth`: write a real HF-layout MoE checkpoint with random weights and planted routing.

The tensor list comes from mlx-lm itself: `build_skeleton(config)` gives the model with lazy
parameters, whose names/shapes are the post-sanitize ones; stacked experts are mapped back to
per-expert HF names (`Family.hf_expert_key`) and deepseek's MLA `embed_q`/`unembed_out` back to
HF's `kv_b_proj`. Tensors are generated per name from a seeded RNG (order-independent, so shards
are byte-identical for a seed), one shard at a time (bounded RAM), into a temp dir renamed into
place at the end. The planted routing structure lives in `engine.synth_routing`.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import tomli_w
from mlx.utils import tree_flatten

from engine.errors import CheckpointError, EngineError, StoreExists
from engine.families import FAMILIES, build_skeleton
from engine.synth_routing import RoutingKnobs, RoutingPlan
from engine.tmpdirs import make_tmp

SYNTH_FAMILIES = ("qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe", "olmoe")


@dataclass(frozen=True)
class Preset:
    """Model size; routing structure is the same for every preset."""

    hidden: int  # multiple of 128: expert matrices' input dim must fit every quant group size
    layers: int
    experts: int
    top_k: int
    moe_inter: int  # multiple of 128 for the same reason (down_proj's input)
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    dense_inter: int  # deepseek's first dense layer
    shard_bytes: int  # target shard size; tiny is sharded too so tests see an index
    prompts: int  # probe prompts
    prompt_len: int
    decode_tokens: int


PRESETS: dict[str, Preset] = {
    "tiny": Preset(128, 3, 16, 4, 128, 512, 4, 2, 32, 256, 2 << 20, 3, 32, 16),
    "small": Preset(512, 8, 64, 8, 256, 4096, 8, 4, 64, 1024, 128 << 20, 4, 48, 64),
    "bench": Preset(1024, 12, 128, 8, 512, 8192, 16, 4, 64, 2048, 512 << 20, 4, 48, 64),
}


def make_config(
    family: str, preset: str, seed: int = 0, knobs: RoutingKnobs | None = None
) -> dict[str, Any]:
    """config.json for a family/preset with the family's real HF keys plus a `synth` record."""
    if family not in SYNTH_FAMILIES:
        raise CheckpointError(
            f"unknown family {family!r}; choose one of {', '.join(SYNTH_FAMILIES)}"
        )
    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    p, knobs = PRESETS[preset], knobs or RoutingKnobs()
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
            "first_k_dense_replace": 1,
            "moe_layer_freq": 1,
            "n_group": 1,
            "topk_group": 1,
            "topk_method": "noaux_tc",
            "scoring_func": "sigmoid",
            "norm_topk_prob": True,
            "routed_scaling_factor": 1.0,
            "q_lora_rank": p.hidden // 2,
            "kv_lora_rank": p.hidden // 2,
            "qk_rope_head_dim": p.head_dim // 2,
            "qk_nope_head_dim": p.head_dim,
            "v_head_dim": p.head_dim,
            "num_key_value_heads": p.heads,
            "attention_bias": False,
        }
    cfg["synth"] = {"family": family, "preset": preset, "seed": seed, **knobs.to_dict()}
    return cfg


# ---- tensor plan ---------------------------------------------------------------------------

_LAYER = re.compile(r"\.layers\.(\d+)\.")
# Layers add these to the residual stream: scaled by `drift` so the embedding dominates.
_OUTPUT_PROJ = re.compile(r"(o_proj|down_proj|\.w2)\.weight$")
# Attention mixes earlier tokens into the stream, which correlates consecutive tokens' routes
# beyond the planted topic persistence; it gets a smaller share of the drift.
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

    def __call__(self, name: str, shape: tuple[int, ...]) -> mx.array:
        if name.endswith("e_score_correction_bias"):
            # Routing bias stays float32 as in real DeepSeek-V3/Kimi checkpoints.
            return mx.zeros(shape, dtype=mx.float32)
        return mx.array(self._f32(name, shape)).astype(mx.bfloat16)

    def _f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name == "model.embed_tokens.weight":
            return self.plan.embedding()
        if name == "lm_head.weight":
            return self.plan.lm_head()
        if _ROUTER.search(name):
            return self.plan.router(int(_LAYER.search(name).group(1)))  # type: ignore[union-attr]
        if "norm" in name.rsplit(".", 2)[-2]:
            return np.ones(shape, dtype=np.float32)
        rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
        std = 1.0 / np.sqrt(shape[-1])
        if _OUTPUT_PROJ.search(name) or name.endswith("shared_expert_gate.weight"):
            std *= self.knobs.drift
            if "o_proj" in name:
                std *= _ATTN_SHARE
            elif "shared_expert" in name:
                std *= _SHARED_SHARE
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)


def _shards(
    plan: list[tuple[str, tuple[int, ...]]], shard_bytes: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in plan:
        n = int(np.prod(shape)) * 2
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += n
    return shards


def probe_suite(plan: RoutingPlan, preset_name: str, seed: int) -> dict[str, Any]:
    """The default probes: prompts that follow the decode walk's topic runs."""
    preset = PRESETS[preset_name]
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
    family: str,
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    knobs: RoutingKnobs | None = None,
    progress: bool | None = None,
) -> Path:
    """Write the checkpoint to `out` (atomically) and return `out`.

    progress: show a rich progress bar; None = only for the bench preset.
    """
    out = Path(out)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise CheckpointError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    knobs = knobs or RoutingKnobs()
    config = make_config(family, preset, seed, knobs)
    if out.exists() and not force:
        raise StoreExists(f"{out}: already exists; pass --force to replace it")
    p = PRESETS[preset]
    plan = tensor_plan(config)
    shards = _shards(plan, p.shard_bytes)
    make = TensorMaker(config, seed, knobs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # .<name>.<pid>-XXXX: a synth killed with -9 leaves it; the next synth removes it.
        tmp = make_tmp(out.parent, f".{out.name}.")
    except OSError as e:
        raise CheckpointError(f"{out}: cannot create it ({e}); is a parent a file?") from None
    try:
        weight_map: dict[str, str] = {}
        total = 0
        with _Progress(progress if progress is not None else preset == "bench", len(plan)) as bar:
            for i, names in enumerate(shards, 1):
                fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                tensors: dict[str, mx.array] = {}
                for name, shape in names:
                    tensors[name] = make(name, shape)
                    total += tensors[name].nbytes
                    weight_map[name] = fname
                    bar(1)
                mx.eval(list(tensors.values()))
                mx.save_safetensors(str(tmp / fname), tensors, metadata={"format": "pt"})
                del tensors  # bounded RAM: one shard in memory at a time
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
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


class _Progress:
    """A rich progress bar when wanted, else a no-op; yields a callable advancing it."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda n: None
        from rich.progress import Progress

        self._bar = Progress()
        self._bar.start()
        task = self._bar.add_task("synth tensors", total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
