"""Which HF per-expert tensor is which expert's projection: asked of mlx-lm's own `sanitize`.

mlx-lm renames and stacks an HF checkpoint's per-expert tensors (`...experts.7.w1.weight`) into
its stacked modules (`...switch_mlp.gate_proj.weight`) in each family's `sanitize`. Running
that sanitize on one-element marker arrays, one per source tensor and valued by its index,
reads the mapping off the result with no data touched and no per-family table: row e of a
stacked marker holds the index of expert e's source tensor. Layouts sanitize does more to than
rename and stack (fused gate_up tensors split along an axis) give non-marker shapes and are
refused, naming the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.errors import CheckpointError

PER_EXPERT = re.compile(r"\.experts\.\d+\.")


def per_expert_names(names: Iterable[str]) -> list[str]:
    """Source tensors that belong to one routed expert each (HF per-expert layout)."""
    return sorted(n for n in names if PER_EXPERT.search(n))


def sanitize_map(
    skeleton: nn.Module,
    shapes: dict[str, tuple[int, ...]],
    targets: list[str],
    num_experts: int,
    source: str,
) -> dict[str, list[str]]:
    """stacked target name -> per-expert source names (index = expert), via mlx-lm's sanitize.

    shapes: the per-expert source tensors' shapes (only their rank is used); targets: stacked
    parameter names of the model's expert modules that the checkpoint must provide.
    """
    names = sorted(shapes)
    markers: dict[str, Any] = {
        n: mx.full((1,) * len(shapes[n]), float(i), dtype=mx.float32) for i, n in enumerate(names)
    }
    sanitize = getattr(skeleton, "sanitize", None)
    if sanitize is None:
        raise CheckpointError(f"{source}: the mlx-lm model has no sanitize to map expert names")
    try:
        out = sanitize(dict(markers))
    except Exception as e:  # any family's sanitize: its failure is the checkpoint's to explain
        raise CheckpointError(
            f"{source}: mlx-lm's sanitize could not map the per-expert tensors ({e!r}); convert "
            "the checkpoint with `mlx_lm convert` (which stacks the experts) and pack that"
        ) from e
    mapping: dict[str, list[str]] = {}
    for target in targets:
        arr = out.get(target)
        if arr is None:
            continue
        if arr.shape[0] != num_experts or any(d != 1 for d in arr.shape[1:]):
            raise CheckpointError(
                f"{source}: mlx-lm builds {target} from the source by more than stacking (shape "
                f"{list(arr.shape)} from markers); only per-expert HF layouts pack directly - "
                "convert the checkpoint with `mlx_lm convert` and pack that"
            )
        ids = np.array(arr.astype(mx.float32)).reshape(num_experts)
        if not np.array_equal(ids, np.round(ids)) or ids.min() < 0 or ids.max() >= len(names):
            raise CheckpointError(f"{source}: {target} is not a plain stack of source tensors")
        mapping[target] = [names[int(i)] for i in ids]
    return mapping
