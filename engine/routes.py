"""Recording which experts mlx-lm's own model routes each token to.

Pack's calibration (engine.layout) and the synthetic-model figures (engine.synth.measure) both
run the in-memory mlx-lm model and need every MoE layer's routed ids; one stand-in module does
it for both.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.families import get_experts, moe_blocks, set_experts

# (x [tokens, H] float32: the MoE input, ids [tokens, k]: the routed experts) per layer call
Sink = Callable[[np.ndarray, np.ndarray], None]


class RouteRecorder(nn.Module):
    """Stands in for a block's stacked experts: hands the input and routed ids to `sink`, then
    runs the experts it replaced."""

    def __init__(self, inner: nn.Module, sink: Sink, keep_inputs: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.sink = sink  # a callable, so mlx.nn keeps it as a plain attribute
        self.keep_inputs = keep_inputs  # copying x costs a [tokens, H] float32 array per call

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        # x: [..., H] MoE input, indices: [..., k] expert ids per token
        k = indices.shape[-1]
        xs = np.array(x.astype(mx.float32)).reshape(-1, x.shape[-1]) if self.keep_inputs else None
        self.sink(xs, np.array(indices).reshape(-1, k))
        return self.inner(x, indices)


def record_routes(model: nn.Module, keep_inputs: bool = False) -> dict[int, list]:
    """Put a recorder on every MoE block of `model`: layer -> the list its calls append
    (x or None, ids) to. The lists fill as the model runs; clear them between prompts."""
    sinks: dict[int, list] = {}
    for layer, _path, block in moe_blocks(model):
        sink: list = []
        sinks[layer] = sink
        set_experts(
            block,
            RouteRecorder(get_experts(block), lambda x, i, s=sink: s.append((x, i)), keep_inputs),
        )
    return sinks
