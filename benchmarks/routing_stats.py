"""Routing realism of synthetic checkpoints, as `key: value` lines beside published figures.

    python benchmarks/routing_stats.py                      # every real-shape preset (plan only)
    python benchmarks/routing_stats.py --real kimi-k2 --layers 12
    python benchmarks/routing_stats.py --preset small       # a toy preset, built and run
    python benchmarks/routing_stats.py --validate           # plan-only vs built, on `small`
    python benchmarks/routing_stats.py --validate olmoe-1b-7b --layers 2   # ~1 GB, minutes

Real-shape presets are gigabytes per layer, so their figures come from the routing plan alone
(`engine.synth.calib.simulate`: the planted routers on the token embedding plus a Gaussian
stand-in for each layer's drift, over the first --layers MoE layers); the output says so.
`--validate` shows how far that estimate is from the same figures measured through mlx-lm on a
built toy model. Toy presets are synthesized into a temp dir and routed through mlx-lm.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.synth.calib import simulate
from engine.synth.hf import PRESETS, SYNTH_FAMILIES, make_config, synthesize
from engine.synth.presets import REAL_PRESETS
from engine.synth.routing import RoutingPlan, record_routing, routing_stats

# (low, high) with the default knobs at 25% of experts cached (docs/architecture.md).
TARGETS = {
    "hit_rate": (0.55, 0.80),
    "reuse_vs_chance": (1.5, 2.5),
    "next_layer_recall": (0.6, 0.9),
}


def decode_on_walk(model_dir: Path) -> float:
    """Share of greedy decode steps that follow the planted walk (succ of the current token)."""
    config = json.loads((model_dir / "config.json").read_text())
    succ = RoutingPlan.from_config(config).successor()
    steps = [
        succ.get(a) == b
        for seq in record_routing(model_dir).decoded
        for a, b in itertools.pairwise(seq)
    ]
    return float(np.mean(steps)) if steps else 0.0


def _published(value: float | tuple[float, float]) -> str:
    return f"{value[0]:.2f}-{value[1]:.2f}" if isinstance(value, tuple) else f"~{value:.2f}"


def _inside(ours: float, value: float | tuple[float, float], tol: float) -> bool:
    lo, hi = value if isinstance(value, tuple) else (value, value)
    return lo - tol <= ours <= hi + tol


def real(names: list[str], layers: int) -> bool:
    """Plan-only figures of real-shape presets beside their published ones."""
    ok = True
    for name in names:
        spec = REAL_PRESETS[name]
        config = make_config(None, name, runnable=False)
        fractions = tuple(f.cache_fraction for f in spec.figures if f.cache_fraction)
        t0 = time.perf_counter()
        s = simulate(config, fractions, layers, spec.prompts, spec.prompt_len, spec.decode_tokens)
        print(f"preset: {name}")
        print(f"published_model: {spec.model}")
        print(
            f"method: routing plan alone (no weights built; Gaussian stand-in for layer drift), "
            f"first {s.layers} of {spec.layers - int(config.get('first_k_dense_replace', 0))} "
            f"MoE layers, {s.tokens} tokens per layer"
        )
        for f in spec.figures:
            if f.metric == "hit_rate":
                key, ours, tol = (
                    f"hit_rate_at_{f.cache_fraction:g}",
                    s.hit_rate[f.cache_fraction],
                    0.05,
                )
            elif f.metric == "reuse_vs_chance":
                key, ours, tol = "reuse_vs_chance", s.reuse_vs_chance, 0.25
            else:
                key, ours, tol = "next_layer_recall", s.next_layer_recall, 0.05
            inside = _inside(ours, f.value, tol)
            ok &= inside
            note = "" if inside else "  OUTSIDE"
            print(f"{key}: {ours:.3f}  (published {_published(f.value)}){note}")
        print(
            "tolerance: OUTSIDE marks a figure off the published one by more than 0.05 "
            "(hit rate, recall) or 0.25x (reuse)"
        )
        print(f"source: {spec.source}")
        print(f"stats_s: {time.perf_counter() - t0:.1f}")
        print()
    return ok


def built(family: str, preset: str, seed: int, cache_fraction: float) -> bool:
    """Figures of a toy preset measured through mlx-lm on the built checkpoint."""
    with tempfile.TemporaryDirectory(prefix="routing_stats.") as tmp:
        t0 = time.perf_counter()
        model = synthesize(Path(tmp) / "model", family, preset, seed=seed)
        t1 = time.perf_counter()
        stats = routing_stats(model, cache_fraction=cache_fraction)
        t2 = time.perf_counter()
        on_walk = decode_on_walk(model)
    print(f"family: {family}")
    print(f"preset: {preset}")
    print(f"seed: {seed}")
    print("method: built checkpoint routed through mlx-lm")
    for key in ("num_experts", "top_k", "cache_experts", "moe_layers", "tokens"):
        print(f"{key}: {stats[key]}")
    ok = True
    for key, value in stats.items():
        if isinstance(value, float):
            lo_hi = TARGETS.get(key)
            note = ""
            if lo_hi:
                inside = lo_hi[0] <= value <= lo_hi[1]
                ok &= inside
                note = f"  (target {lo_hi[0]}-{lo_hi[1]}{'' if inside else ', OUTSIDE'})"
            print(f"{key}: {value:.3f}{note}")
    print(f"decode_on_walk: {on_walk:.3f}")
    print(f"synth_s: {t1 - t0:.1f}")
    print(f"stats_s: {t2 - t1:.1f}")
    return ok


def validate(family: str, preset: str, layers: int) -> None:
    """The plan-only estimate beside mlx-lm's measurement on the same built model (a real-shape
    preset is built with --layers `layers` at 4 bits)."""
    real_shape = preset in REAL_PRESETS
    spec = REAL_PRESETS[preset] if real_shape else PRESETS[preset]
    fam = None if real_shape else family
    cut = layers if real_shape else None
    config = make_config(fam, preset, layers=cut)
    with tempfile.TemporaryDirectory(prefix="routing_stats.") as tmp:
        t0 = time.perf_counter()
        model = synthesize(
            Path(tmp) / "model", fam, preset, layers=cut, quantize=4 if real_shape else None
        )
        t1 = time.perf_counter()
        real_s = routing_stats(model, cache_fraction=0.25)
        on_walk = decode_on_walk(model)
    plan_s = simulate(config, (0.25,), None, spec.prompts, spec.prompt_len, spec.decode_tokens)
    what = f"{preset} --layers {cut} --quantize 4" if real_shape else f"{family} {preset}"
    print(f"validate: {what} (built, routed through mlx-lm, vs routing plan alone)")
    for key, ours in (
        ("hit_rate_at_0.25", plan_s.hit_rate[0.25]),
        ("reuse_vs_chance", plan_s.reuse_vs_chance),
        ("next_layer_recall", plan_s.next_layer_recall),
    ):
        measured = real_s["hit_rate" if key.startswith("hit") else key]
        print(f"{key}: built {measured:.3f}  plan {ours:.3f}  diff {ours - measured:+.3f}")
    print(f"decode_on_walk: {on_walk:.3f}")
    print(f"synth_s: {t1 - t0:.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", nargs="*", choices=list(REAL_PRESETS), help="default: all")
    ap.add_argument(
        "--layers", type=int, default=0, help="MoE layers simulated (real presets; 0 = all)"
    )
    ap.add_argument("--preset", choices=list(PRESETS), help="a toy preset, built and run")
    ap.add_argument("--family", default="qwen3_moe", choices=SYNTH_FAMILIES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-fraction", type=float, default=0.25)
    ap.add_argument(
        "--validate",
        nargs="?",
        const="small",
        choices=[*PRESETS, *REAL_PRESETS],
        help="plan-only vs built on a preset (default small; real shapes use --layers, 4-bit)",
    )
    args = ap.parse_args(argv)
    if args.validate:
        validate(args.family, args.validate, args.layers)
        return 0
    if args.preset:
        ok = built(args.family, args.preset, args.seed, args.cache_fraction)
    else:
        ok = real(args.real or list(REAL_PRESETS), args.layers)
    print(f"in_target: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
