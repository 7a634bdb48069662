"""Routing realism of a synthetic checkpoint: synthesize one into a temp dir, route its probe
suite through mlx-lm, print the figures as `key: value` lines next to the DESIGN.md targets.

    python benchmarks/routing_stats.py [--family qwen3_moe] [--preset small] [--seed 0]
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

from engine.synth import PRESETS, SYNTH_FAMILIES, synthesize
from engine.synth_routing import RoutingPlan, record_routing, routing_stats

# (low, high) with the default knobs at 25% of experts cached; see DESIGN.md "Synthetic models".
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="qwen3_moe", choices=SYNTH_FAMILIES)
    ap.add_argument("--preset", default="small", choices=list(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-fraction", type=float, default=0.25)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="routing_stats.") as tmp:
        t0 = time.perf_counter()
        model = synthesize(Path(tmp) / "model", args.family, args.preset, seed=args.seed)
        t1 = time.perf_counter()
        stats = routing_stats(model, cache_fraction=args.cache_fraction)
        t2 = time.perf_counter()
        on_walk = decode_on_walk(model)
    print(f"family: {args.family}")
    print(f"preset: {args.preset}")
    print(f"seed: {args.seed}")
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
    print(f"in_target: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
