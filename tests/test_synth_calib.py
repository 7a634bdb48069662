"""Routing calibration: the plan-only estimate agrees with mlx-lm on a built model, and each
real-shape preset's knobs land on its published figures (in that estimate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from engine.synth.calib import simulate
from engine.synth.hf import PRESETS, TensorMaker, make_config
from engine.synth.presets import REAL_PRESETS
from engine.synth.routing import RoutingKnobs, depth_scale, routing_stats


def test_plan_estimate_matches_mlx_lm_on_a_built_model(
    tiny_checkpoint: Callable[[str], Path],
) -> None:
    built = routing_stats(tiny_checkpoint("qwen3_moe"))
    p = PRESETS["tiny"]
    plan = simulate(
        make_config("qwen3_moe", "tiny"), (0.25,), None, p.prompts, p.prompt_len, p.decode_tokens
    )
    assert abs(plan.hit_rate[0.25] - built["hit_rate"]) < 0.06, (plan, built)
    assert abs(plan.next_layer_recall - built["next_layer_recall"]) < 0.06, (plan, built)
    assert abs(plan.reuse_vs_chance - built["reuse_vs_chance"]) < 0.3, (plan, built)
    # Structure off: the estimate falls to chance as the built model does.
    flat = make_config("qwen3_moe", "tiny", knobs=RoutingKnobs(skew=0.0, topic_strength=0.0))
    assert simulate(flat, (0.25,)).reuse_vs_chance < 1.4


# How far the first 4 MoE layers may sit from a published figure: they carry less accumulated
# drift than the model's average layer (benchmarks/routing_stats.py runs full depth).
TOLERANCE = {"hit_rate": 0.08, "reuse_vs_chance": 0.35, "next_layer_recall": 0.06}


@pytest.mark.parametrize("name", ["qwen3-30b-a3b", "olmoe-1b-7b", "mixtral-8x7b"])
def test_preset_knobs_land_on_published_figures(name: str) -> None:
    spec = REAL_PRESETS[name]
    fractions = tuple(f.cache_fraction for f in spec.figures if f.cache_fraction)
    s = simulate(make_config(None, name), fractions, 4, prompts=2)
    for f in spec.figures:
        ours = {
            "hit_rate": s.hit_rate.get(f.cache_fraction or 0.0, 0.0),
            "reuse_vs_chance": s.reuse_vs_chance,
            "next_layer_recall": s.next_layer_recall,
        }[f.metric]
        lo, hi = f.value if isinstance(f.value, tuple) else (f.value, f.value)
        tol = TOLERANCE[f.metric]
        assert lo - tol <= ours <= hi + tol, (f, s)


def test_depth_scale_keeps_a_cut_model_equal_to_the_full_one() -> None:
    assert depth_scale(make_config("qwen3_moe", "tiny")) == 1.0  # toy presets unchanged
    full = make_config(None, "olmoe-1b-7b")
    cut = make_config(None, "olmoe-1b-7b", layers=1)
    assert depth_scale(full) == depth_scale(cut) == pytest.approx(np.sqrt(8 / 16))
    name, shape = "model.layers.0.self_attn.o_proj.weight", (2048, 2048)
    a = TensorMaker(full, 0, REAL_PRESETS["olmoe-1b-7b"].knobs)(name, shape)
    b = TensorMaker(cut, 0, REAL_PRESETS["olmoe-1b-7b"].knobs)(name, shape)
    assert mx.array_equal(a, b).item()
