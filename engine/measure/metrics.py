"""How the timing and cache figures are computed: the one definition `probe`, `bench`, `run`
and the trace simulator share (their names and directions: engine/contract.py).

- `ttft_s`: time to first token, the prompt's forward pass plus the first sample; over a suite,
  the median over prompts. `ttft_by_prompt_tokens`: the same median per prompt length.
- `decode_tok_s`: sustained decode speed: each prompt's first `warmup` decode steps are excluded
  (caches and prefetch warm up there), then measured steps / their summed time. None when no
  step is left: nothing was measured, and 0 would rank worst where a latency of 0 ranks best.
- `latency_p50_s`, `latency_p99_s`, `latency_max_s`: over those same measured steps (None
  likewise).
- `prefill_tok_s`: prompt tokens / summed time to first token.
- `cache_hit_rate`: decode phase only: expert requests the engine cache served / expert
  requests, counted from each prompt's first token to its last. Prefill asks for a whole
  prompt's experts in one step and would dilute what decode, the steady state, sees.
- `prefetch_precision`, `prefetch_recall`: decode phase, on predicted vs used expert sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.generate import Generation


@dataclass
class Phase:
    """Engine counter totals of one phase (prefill or decode), summed over prompts."""

    requests: int = 0
    hits: int = 0
    bytes: int = 0  # what the engine asked its reader for
    disk: int = 0  # what the kernel actually fetched from storage
    stall_s: float = 0.0
    predicted: int = 0
    used: int = 0
    correct: int = 0

    def add(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        """Add the difference of two Engine.counters() snapshots (b taken after a)."""
        self.requests += b["expert_requests"] - a["expert_requests"]
        self.hits += b["cache_hits"] - a["cache_hits"]
        self.bytes += b["bytes_read"] - a["bytes_read"]
        self.disk += b["disk_read_bytes"] - a["disk_read_bytes"]
        self.stall_s += b["read_wait_s"] - a["read_wait_s"]  # blocked on reads: the I/O stall
        self.predicted += b.get("prefetch_predicted", 0) - a.get("prefetch_predicted", 0)
        self.used += b.get("prefetch_used", 0) - a.get("prefetch_used", 0)
        self.correct += b.get("prefetch_correct", 0) - a.get("prefetch_correct", 0)

    @property
    def cache_hit_rate(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def prefetch_precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def prefetch_recall(self) -> float:
        return self.correct / self.used if self.used else 0.0


def ttft_by_length(gens: Sequence[Generation]) -> dict[str, float]:
    """Median ttft_s of the prompts of each length, keyed by the length (a JSON key)."""
    by: dict[int, list[float]] = {}
    for g in gens:
        by.setdefault(len(g.prompt), []).append(g.ttft_s)
    return {str(n): float(np.median(v)) for n, v in sorted(by.items())}


def timing(gens: Sequence[Generation], warmup: int) -> dict[str, Any]:
    """ttft_s, prefill_tok_s, decode_tok_s and latencies of one or more generations (prompts),
    with the counts behind them."""
    if not gens:
        raise ValueError("timing needs at least one generation")
    lat: list[float] = []
    excluded = 0
    for g in gens:
        w = min(warmup, len(g.token_s))
        excluded += w
        lat.extend(g.token_s[w:])
    prompt_tokens = sum(len(g.prompt) for g in gens)
    prefill_s = sum(g.prefill_s for g in gens)
    decode_s = float(np.sum(lat)) if lat else 0.0
    return {
        "ttft_s": float(np.median([g.ttft_s for g in gens])),
        "ttft_by_prompt_tokens": ttft_by_length(gens),
        "prefill_tok_s": prompt_tokens / prefill_s if prefill_s > 0 else 0.0,
        "decode_tok_s": len(lat) / decode_s if lat and decode_s > 0 else None,
        "latency_p50_s": float(np.percentile(lat, 50)) if lat else None,
        "latency_p99_s": float(np.percentile(lat, 99)) if lat else None,
        "latency_max_s": float(np.max(lat)) if lat else None,
        "decode_tokens_measured": len(lat),
        "warmup_tokens_excluded": excluded,
        "prefill_tokens": prompt_tokens,
        "tokens": sum(len(g.tokens) for g in gens),
    }
