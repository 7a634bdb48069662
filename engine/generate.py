"""Greedy generation and teacher-forced scoring over any mlx-lm model (streaming or resident).

Timing is per token and synchronous (mx.eval each step) so latencies mean what they say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.cache import make_prompt_cache


@dataclass
class Generation:
    prompt: list[int]
    tokens: list[int]  # generated ids, the first one produced by prefill
    prefill_s: float  # prompt forward pass + first token
    token_s: list[float] = field(default_factory=list)  # latency of each later decode step
    logits: list[np.ndarray] = field(default_factory=list)  # (V,) per generated token, if kept

    @property
    def ttft_s(self) -> float:
        return self.prefill_s


def generate(
    model: nn.Module,
    prompt: Sequence[int],
    max_tokens: int,
    *,
    eos: set[int] | None = None,
    keep_logits: bool = False,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Greedy decoding of up to max_tokens new tokens (stops early on an eos id)."""
    if not prompt:
        raise ValueError("prompt is empty: give at least one token")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    logits = model(mx.array([list(prompt)]), cache=cache)[0, -1]  # (V,)
    tok = int(mx.argmax(logits).item())
    gen = Generation(list(prompt), [tok], prefill_s=time.perf_counter() - t0)
    if keep_logits:
        gen.logits.append(np.array(logits.astype(mx.float32)))
    if on_token:
        on_token(tok)
    while len(gen.tokens) < max_tokens and not (eos and tok in eos):
        t = time.perf_counter()
        logits = model(mx.array([[tok]]), cache=cache)[0, -1]
        tok = int(mx.argmax(logits).item())
        gen.token_s.append(time.perf_counter() - t)
        gen.tokens.append(tok)
        if keep_logits:
            gen.logits.append(np.array(logits.astype(mx.float32)))
        if on_token:
            on_token(tok)
    return gen


def score(model: nn.Module, ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced next-token logits for every position: (len(ids), V) float32."""
    cache = make_prompt_cache(model)
    logits = model(mx.array([list(ids)]), cache=cache)[0]
    return np.array(logits.astype(mx.float32))
