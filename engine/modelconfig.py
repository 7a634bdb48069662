"""Sanity checks of a model's config.json (a checkpoint's or a store's) before mlx-lm sees it:
its constructors turn odd values into ZeroDivisionError, OverflowError or KeyError tracebacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.families import Family, text_config

MLX_QUANT_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize supports
MLX_GROUP_SIZES = (32, 64, 128)


def check_model_config(config: dict[str, Any], family: Family, src: Path) -> None:
    """Catch the inconsistencies mlx-lm would turn into an obscure error (or a traceback) later.
    The five families with a key table must have every key; any other family (its sizes maybe
    nested under text_config) is checked on the keys it has."""
    whole, config = config, text_config(config)
    keys = ("hidden_size", "num_hidden_layers", "vocab_size", family.num_experts_key)
    for key in (*keys, "num_experts_per_tok"):
        if not key or (key not in config and not family.has_hf_names):
            continue
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{src}: key {key!r} must be a positive integer, got {value!r}")
    for key, value in config.items():
        # MLX shapes are int32: a larger dimension overflows inside mlx-lm's constructors.
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**31:
            raise CheckpointError(f"{src}: key {key!r} = {value} is too large (>= 2**31)")
    k, n = config.get("num_experts_per_tok"), config.get(family.num_experts_key or "")
    if isinstance(k, int) and isinstance(n, int) and k > n:
        raise CheckpointError(
            f"{src}: key 'num_experts_per_tok' ({config['num_experts_per_tok']}) exceeds "
            f"{family.num_experts_key!r} ({config[family.num_experts_key]})"
        )
    q = whole.get("quantization")
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
