"""Measure a fixed grid of the demo space ONCE, for benchmarks/search_efficiency.py to replay.

Each sampler comparison then costs seconds instead of days: a trial becomes a lookup of the
nearest measured grid point plus noise drawn from the measured spread. Writes
benchmarks/data/grid_small.json (and the routing trace the simulator replays) with the engine
commit and machine it was measured on.

    python benchmarks/measure_grid.py [--budget-s 1200] [--work /tmp/grid]

What is measured (small synthesized qwen3_moe, a cut-down suite so one probe is ~10 s):
- the grid: quant_bits x cache_fraction x io_mode x prefetch x experts_per_token, in a fixed
  shuffled order (drift from other load on the machine then does not line up with a knob),
  until the budget runs out (a partial grid is still an unbiased subset);
- the noise floor: the engine default measured `--noise-repeats` times;
- the cheap fidelity: a one-prompt, short probe on a few grid points, so the replay can draw
  cheap-probe results with their real bias and spread;
- a routing trace + rates for the trace simulator (autoresearch.screen.Screener.record).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from autoresearch.fidelity import cheap_suite
from autoresearch.screen import Screener
from autoresearch.space import to_config
from autoresearch.trial import run_probe
from engine.config import EngineConfig
from engine.store import Store

DATA = Path(__file__).parent / "data"
GRID = {
    "quant_bits": [16, 8, 4],
    "cache_fraction": [0.02, 0.126, 0.8],  # log-spaced over the demo space's range
    "io_mode": ["direct", "buffered"],
    "prefetch": ["none", "next_layer", "previous_token"],
    "experts_fraction": [0.5, 1.0],  # fractions of the model's top-k (8): 4 and 8
}
METRICS = ("decode_tok_s", "memory_bytes", "kl_mean")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/grid"))
    ap.add_argument("--budget-s", type=float, default=1200.0)
    ap.add_argument("--noise-repeats", type=int, default=3)
    ap.add_argument("--cheap-points", type=int, default=10)
    ap.add_argument("--out", type=Path, default=DATA / "grid_small.json")
    args = ap.parse_args()
    from engine.pack import pack
    from engine.synth.hf import synthesize

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "model"
    if not (model / "config.json").is_file():
        synthesize(model, family="qwen3_moe", preset="small", seed=0)
    stores = {}
    for bits in GRID["quant_bits"]:
        path = args.work / f"store-{bits}"
        if not (path / "manifest.json").is_file():
            pack(model, path, bits=bits, group_size=64, progress=False)
        stores[bits] = Store.open(path)
    full = args.work / "suite-full.toml"
    suite = tomllib.loads((model / "probe_suite.toml").read_text())
    # Two prompts x 32 decode tokens: the grid needs ~100 probes inside the time budget.
    short = {**suite, "prompts": [dict(p, decode_tokens=32) for p in suite["prompts"][:2]]}
    full.write_text(tomli_w.dumps(short))
    cheap = cheap_suite(full, args.work / "suite-cheap.toml", prompts=1, decode_tokens=12)

    t0 = time.monotonic()
    out: dict[str, Any] = {"engine_commit": _git_rev(), "grid": GRID, "top_k": 8}
    # The engine default (16-bit store, its own cache size): repeated for the noise floor.
    noise = [_measure(EngineConfig(), stores[16], full) for _ in range(args.noise_repeats)]
    out["baseline"] = noise
    out["noise"] = {
        m: statistics.stdev([r[m] for r in noise]) / statistics.mean([r[m] for r in noise])
        if statistics.mean([r[m] for r in noise])
        else 0.0
        for m in METRICS
    }
    points = [dict(zip(GRID, v, strict=True)) for v in itertools.product(*GRID.values())]
    random.Random(0).shuffle(points)
    rows = []
    for i, params in enumerate(points):
        if time.monotonic() - t0 > args.budget_s:
            print(f"budget spent after {i} of {len(points)} grid points", flush=True)
            break
        store = stores[params["quant_bits"]]
        r = _measure(_config(params, store), store, full)
        rows.append({"params": params, **r})
        print(f"{i + 1}/{len(points)} {params} -> {r}", flush=True)
    out["rows"] = rows
    pairs = []
    for row in rows[: args.cheap_points]:
        store = stores[row["params"]["quant_bits"]]
        r = _measure(_config(row["params"], store), store, cheap)
        pairs.append({"params": row["params"], "cheap": r, "full": {m: row[m] for m in METRICS}})
    out["cheap"] = pairs
    screener = Screener.record(stores[16].root, DATA, keep=0.8, timeout_s=300)
    out["trace"] = f"screen-{stores[16].root.name}.trace.npz"
    sim = screener.simulator
    out["rates"] = {
        "compute_s_per_token": sim.compute_s_per_token,
        "disk_bytes_per_s": sim.disk_bytes_per_s,
    }
    out["expert_bytes"] = _expert_bytes(stores[16])
    out["machine"] = rows[0].get("machine") if rows else None
    out["measure_s"] = round(time.monotonic() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}: {len(rows)} grid points in {out['measure_s']} s")


def _config(params: dict[str, Any], store: Store) -> EngineConfig:
    knobs = {k: v for k, v in params.items() if k != "quant_bits"}
    return to_config(knobs, expert_bytes=_expert_bytes(store), top_k=store.top_k)


def _expert_bytes(store: Store) -> int:
    return len(store.layers) * store.num_experts * store.expert_nbytes


def _measure(config: EngineConfig, store: Store, suite: Path) -> dict[str, Any]:
    res = run_probe(
        config,
        store=store.root,
        suite=suite,
        repeats=1,
        cold=True,
        timeout_s=600,
        required=list(METRICS),
    )
    if res.error is not None:
        return {"error": res.error, "wall_s": res.wall_s}
    m = res.metrics
    return {
        **{k: float(m[k]) for k in METRICS},
        "wall_s": round(res.wall_s, 2),
        "machine": m.get("machine"),
    }


def _git_rev() -> str:
    try:
        cmd = ["git", "rev-parse", "--short=12", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
