"""What differs between MoE families: checkpoint key names and where top-k lives.

Everything else (attention, norms, routing math) comes from `mlx_lm.models.<model_type>`; this
file only maps between the HF per-expert layout and mlx-lm's stacked `switch_mlp` layout.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from engine.errors import UnsupportedModel


@dataclass(frozen=True)
class Family:
    model_type: str
    # mlx-lm projection name -> HF per-expert projection name, in on-disk order.
    projections: tuple[tuple[str, str], ...]
    # config.json key holding the number of routed experts.
    num_experts_key: str
    # Sets top-k on the MoE block that owns `switch_mlp` (experts_per_token knob).
    set_top_k: Callable[[nn.Module, int], None]
    # Reads the model's own top-k from that block.
    get_top_k: Callable[[nn.Module], int]
    # Routing scores of the block for hidden states x (T, D) -> (T, E); top-k of them is chosen.
    # Used by next_layer prefetch to apply a later layer's router to the current hidden state.
    router_scores: Callable[[nn.Module, mx.array], mx.array] = lambda block, x: block.gate(x)

    @property
    def mlx_projections(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.projections)

    def hf_expert_key(
        self, block_path: str, expert: int, mlx_proj: str, part: str = "weight"
    ) -> str:
        """HF name of one expert's tensor, e.g. model.layers.3.mlp.experts.7.gate_proj.weight."""
        hf = dict(self.projections)[mlx_proj]
        return f"{block_path}.experts.{expert}.{hf}.{part}"

    def stacked_key(self, block_path: str, mlx_proj: str, part: str = "weight") -> str:
        """mlx-community stacked name, e.g. model.layers.3.mlp.switch_mlp.up_proj.weight."""
        return f"{block_path}.switch_mlp.{mlx_proj}.{part}"


def _attr_setter(attr: str) -> Callable[[nn.Module, int], None]:
    def set_k(block: nn.Module, k: int) -> None:
        setattr(block, attr, k)

    return set_k


def _attr_getter(attr: str) -> Callable[[nn.Module], int]:
    def get_k(block: nn.Module) -> int:
        return int(getattr(block, attr))

    return get_k


def _set_gate_top_k(block: nn.Module, k: int) -> None:
    block.gate.top_k = k  # deepseek_v3 routes inside MoEGate


def _get_gate_top_k(block: nn.Module) -> int:
    return int(block.gate.top_k)


def _deepseek_scores(block: nn.Module, x: mx.array) -> mx.array:
    # Mirrors mlx-lm's group_expert_select: sigmoid scores plus the correction bias pick top-k.
    gate = block.gate
    return mx.sigmoid((x @ gate.weight.T).astype(mx.float32)) + gate.e_score_correction_bias


_GLU = (("gate_proj", "gate_proj"), ("up_proj", "up_proj"), ("down_proj", "down_proj"))

FAMILIES: dict[str, Family] = {
    "qwen3_moe": Family(
        "qwen3_moe", _GLU, "num_experts", _attr_setter("top_k"), _attr_getter("top_k")
    ),
    "qwen2_moe": Family(
        "qwen2_moe", _GLU, "num_experts", _attr_setter("top_k"), _attr_getter("top_k")
    ),
    "olmoe": Family("olmoe", _GLU, "num_experts", _attr_setter("top_k"), _attr_getter("top_k")),
    "mixtral": Family(
        "mixtral",
        (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")),
        "num_local_experts",
        _attr_setter("num_experts_per_tok"),
        _attr_getter("num_experts_per_tok"),
    ),
    "deepseek_v3": Family(
        "deepseek_v3",
        _GLU,
        "n_routed_experts",
        _set_gate_top_k,
        _get_gate_top_k,
        _deepseek_scores,
    ),
}


def family_for(config: dict[str, Any], *, source: str = "config.json") -> Family:
    model_type = config.get("model_type")
    if model_type is None:
        raise UnsupportedModel(f"{source}: no 'model_type' key; is this a model config?")
    fam = FAMILIES.get(model_type)
    if fam is None:
        raise UnsupportedModel(
            f"{source}: model_type {model_type!r} is not supported; "
            f"supported families are {', '.join(sorted(FAMILIES))}"
        )
    return fam


def model_classes(config: dict[str, Any], *, source: str = "config.json") -> tuple[type, type]:
    """mlx-lm's (Model, ModelArgs) for a config, after checking we support the family."""
    fam = family_for(config, source=source)
    module = importlib.import_module(f"mlx_lm.models.{fam.model_type}")
    return module.Model, module.ModelArgs


def build_skeleton(config: dict[str, Any], *, source: str = "config.json") -> nn.Module:
    """An mlx-lm model for `config`; its parameters stay lazy (never evaluated) until loaded."""
    model_cls, args_cls = model_classes(config, source=source)
    try:
        args = args_cls.from_dict(config)
        return model_cls(args)
    except (TypeError, KeyError, ValueError, AssertionError) as e:
        from engine.errors import CheckpointError

        raise CheckpointError(f"{source}: inconsistent model config ({e})") from e


def moe_blocks(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(layer index, dotted path of the MoE block, block) for every block owning `switch_mlp`."""
    out = []
    for path, module in model.named_modules():
        if "switch_mlp" in module and isinstance(module["switch_mlp"], nn.Module):
            parts = path.split(".")
            layer = int(parts[parts.index("layers") + 1])
            out.append((layer, path, module))
    out.sort(key=lambda t: t[0])
    return out
