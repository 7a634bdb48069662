"""Trace simulator on a hand-built trace: figures checked by hand, knobs it cannot model refused.

(Agreement with the engine on a recorded trace: tests/test_probe.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import EngineConfig
from engine.errors import ConfigError
from engine.measure.simulate import simulate, unsupported
from engine.measure.trace import DECODE, RANK_DEPTH, RANK_WIDTH, Trace

SPAN = 4096


def _trace() -> Trace:
    """Two decode tokens through MoE layers 0 and 1 (8 experts, top-2): layer 0 routes {0, 1},
    layer 1 routes {2, 3}; layer 0's step ranks layer 1's experts 2, 3 first (a perfect guess)."""
    n = 4
    rank = np.full((n, 1 + RANK_DEPTH, RANK_WIDTH), -1, np.int32)
    for i in (0, 2):  # layer 0's steps: own ranking, then layer 1's
        rank[i, 0, :8] = [0, 1, 4, 5, 6, 7, 2, 3]
        rank[i, 1, :8] = [2, 3, 0, 1, 4, 5, 6, 7]
    for i in (1, 3):
        rank[i, 0, :8] = [2, 3, 0, 1, 4, 5, 6, 7]
    meta = {
        "entry_bytes": 100,
        "expert_span": SPAN,
        "top_k": 2,
        "moe_layers": [0, 1],
        "num_experts": 8,
    }
    return Trace(
        meta=meta,
        layer=np.array([0, 1, 0, 1], np.int32),
        prompt=np.zeros(n, np.int32),
        phase=np.full(n, DECODE, np.int8),
        step=np.array([1, 1, 2, 2], np.int32),
        offsets=np.array([0, 2, 4, 6, 8], np.int64),
        experts=np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32),
        scores=np.zeros(8, np.float32),
        rank=rank,
    )


def test_perfect_next_layer_guess_hand_checked() -> None:
    cfg = EngineConfig(cache_bytes=0, prefetch="next_layer", prefetch_depth=1, prefetch_width=2)
    out = simulate(_trace(), cfg)
    assert out["decode_tokens"] == 2
    assert out["cache_hit_rate"] == 0.0  # no cache
    assert out["prefetch_precision"] == out["prefetch_recall"] == 1.0
    # Per token: layer 0 reads its 2 experts on demand, layer 1's 2 were prefetched.
    assert out["demand_bytes_per_token"] == 2 * SPAN
    assert out["bytes_read_per_token"] == 4 * SPAN


def test_cache_and_wrong_guesses_hand_checked() -> None:
    # A cache for all 4 experts: token 1 misses all 4, token 2 hits all 4. previous_token
    # guesses layer 1 from its last step: nothing on token 1, {2, 3} (right) on token 2.
    cfg = EngineConfig(cache_bytes=400, prefetch="previous_token", prefetch_width=2)
    out = simulate(_trace(), cfg)
    assert out["cache_hit_rate"] == 0.5
    assert out["demand_bytes_per_token"] == 4 * SPAN / 2
    assert out["prefetch_recall"] == 1.0  # layer 1 on token 2: its only prediction
    # Width 3 guesses one expert layer 1 never uses: precision 2/3.
    wide = simulate(_trace(), cfg.replace(prefetch_width=3))
    assert wide["prefetch_precision"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (
            {"prefetch": "next_layer", "prefetch_depth": RANK_DEPTH + 1},
            f"prefetch_depth = {RANK_DEPTH + 1}",
        ),
        (
            {"prefetch": "previous_token", "prefetch_width": RANK_WIDTH + 1},
            f"prefetch_width = {RANK_WIDTH + 1}",
        ),
    ],
)
def test_knobs_past_what_a_trace_ranks_are_refused(knobs: dict, message: str) -> None:
    cfg = EngineConfig(**knobs)
    why = unsupported(cfg)
    assert why is not None and message in why
    with pytest.raises(ConfigError, match=message):
        simulate(_trace(), cfg)
    # The same knob without prefetch is fine: it models nothing there.
    assert unsupported(cfg.replace(prefetch="none")) is None


def test_the_deepest_modelled_prefetch_is_accepted() -> None:
    cfg = EngineConfig(prefetch="next_layer", prefetch_depth=RANK_DEPTH, prefetch_width=RANK_WIDTH)
    assert unsupported(cfg) is None
    assert simulate(_trace(), cfg)["decode_tokens"] == 2


def test_another_top_k_is_refused() -> None:
    with pytest.raises(ConfigError, match="experts_per_token = 1"):
        simulate(_trace(), EngineConfig(experts_per_token=1))
