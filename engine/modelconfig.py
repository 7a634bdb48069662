"""Sanity checks of a model's config.json (a checkpoint's or a store's) before mlx-lm sees it:
its constructors turn odd values into ZeroDivisionError, OverflowError or KeyError tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.families import Family

MLX_QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize supports
MLX_GROUP_SIZES = (32, 64, 128)


def check_model_config(config: dict[str, Any], family: Family, src: Path) -> None:
    """Catch the inconsistencies mlx-lm would turn into an obscure error (or a traceback) later."""
    keys = ("hidden_size", "num_hidden_layers", "vocab_size", family.num_experts_key)
    for key in (*keys, "num_experts_per_tok"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{src}: key {key!r} must be a positive integer, got {value!r}")
    for key, value in config.items():
        # MLX shapes are int32: a larger dimension overflows inside mlx-lm's constructors.
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**31:
            raise CheckpointError(f"{src}: key {key!r} = {value} is too large (>= 2**31)")
    if config["num_experts_per_tok"] > config[family.num_experts_key]:
        raise CheckpointError(
            f"{src}: key 'num_experts_per_tok' ({config['num_experts_per_tok']}) exceeds "
            f"{family.num_experts_key!r} ({config[family.num_experts_key]})"
        )
    q = config.get("quantization")
    if q is not None:
        ok = isinstance(q, dict) and all(
            isinstance(q.get(k), int) and not isinstance(q.get(k), bool) and q.get(k) in allowed
            for k, allowed in (("bits", MLX_QUANT_BITS), ("group_size", MLX_GROUP_SIZES))
        )
        if not ok:
            raise CheckpointError(
                f"{src}: key 'quantization' needs integer bits in {MLX_QUANT_BITS} and "
                f"group_size in {MLX_GROUP_SIZES}, got {q!r}"
            )
