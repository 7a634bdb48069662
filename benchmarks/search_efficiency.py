"""How many trials each sampler needs: hypervolume vs trials on the project's own objective.

Two replayed objectives, so a comparison costs minutes instead of weeks of probes:
- table: the grid measured once by benchmarks/measure_grid.py (benchmarks/data/grid_small.json);
  a trial is answered by the nearest measured grid point, with noise drawn from the measured
  noise floor (relative spread of the repeated engine default); the cheap probe from the
  measured cheap/full pairs (their mean ratio and its spread, at their measured cost);
- trace: the engine's trace simulator on the recorded routing trace of the same model
  (cache/prefetch knobs; decode_tok_s estimate vs cache bytes), tabulated once on a fine grid.

Each trial's hypervolume is that of the TRUE values of the trials on the front the study would
report from its noisy measurements (what a user gets after confirming it), via Optuna's own
hypervolume. Cost is counted in full probes (racing repeats count, a cheap probe counts its
measured share). Prints, per sampler and variant, the cost needed to reach random search's
200-trial hypervolume (median over seeds) and the hypervolume at 25/50/100/200.

    python benchmarks/search_efficiency.py [--seeds 5] [--trials 200] [--gp-trials 60]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study._multi_objective import _is_pareto_front
from optuna.trial import TrialState

from autoresearch.fidelity import MIN_TOLERANCE, promote
from autoresearch.hypervolume import hypervolume, losses
from autoresearch.racing import RacingSpec, combine, verdict
from autoresearch.replay import Row, Table
from autoresearch.sampler import choose_sampler, make_sampler
from autoresearch.space import Knob, Space

DATA = Path(__file__).parent / "data"
VARIANTS = {
    "plain": (False, False),
    "racing": (True, False),
    "fidelity": (False, True),
    "racing+fidelity": (True, True),
}


@dataclass
class Objective:
    name: str
    space: Space
    table: Table
    directions: list[str]
    noise: list[float]  # relative spread per objective of one full probe
    cheap_ratio: list[float]  # cheap probe / full probe, per objective (its bias)
    cheap_noise: list[float]  # relative spread of that ratio
    cheap_cost: float  # a cheap probe's wall time over a full one's
    limits: list[float | None]  # constraint: value <= limit (None: unconstrained)

    def measure(self, row: Row, rng: np.random.Generator) -> list[float]:
        return [
            v * (1 + s * rng.standard_normal()) for v, s in zip(row.values, self.noise, strict=True)
        ]

    def cheap(self, row: Row, rng: np.random.Generator) -> list[float]:
        return [
            v * r * (1 + s * rng.standard_normal())
            for v, r, s in zip(row.values, self.cheap_ratio, self.cheap_noise, strict=True)
        ]


def table_objective(doc: dict[str, Any]) -> Objective:
    grid = doc["grid"]
    knobs = (
        Knob("quant_bits", choices=tuple(grid["quant_bits"])),
        Knob("cache_fraction", low=0.02, high=0.8, log=True),
        Knob("io_mode", choices=tuple(grid["io_mode"])),
        Knob("prefetch", choices=tuple(grid["prefetch"])),
        Knob("experts_fraction", low=0.5, high=1.0),
    )
    space = Space(path=DATA / "grid_small.json", knobs=knobs, fixed={})
    names = ["decode_tok_s", "memory_bytes", "kl_mean"]
    ok = [r for r in doc["rows"] if "error" not in r]
    rows = [Row(r["params"], tuple(float(r[m]) for m in names)) for r in ok]
    noise = [float(doc["noise"][m]) for m in names]
    pairs = [p for p in doc["cheap"] if "error" not in p["cheap"]]
    ratios = [[p["cheap"][m] / p["full"][m] if p["full"][m] else 1.0 for p in pairs] for m in names]
    # medians: the first probe of each store and suite also records its quality reference
    full_s = statistics.median(r["wall_s"] for r in ok)
    cheap_s = statistics.median(p["cheap"]["wall_s"] for p in pairs)
    return Objective(
        "table",
        space,
        Table(space, rows),
        ["maximize", "minimize", "minimize"],
        noise,
        [statistics.mean(r) for r in ratios],
        [
            statistics.stdev(r) / abs(statistics.mean(r)) if statistics.mean(r) else 0.0
            for r in ratios
        ],
        cheap_s / full_s,
        [None, 4e9, 0.5],
    )


def trace_objective(doc: dict[str, Any], noise: float) -> Objective:
    from engine.config import EngineConfig
    from engine.measure.simulate import Rates, simulate
    from engine.measure.trace import Trace

    trace = Trace.load(DATA / doc["trace"])
    rates = Rates(**doc["rates"])
    knobs = (
        Knob("cache_fraction", low=0.02, high=0.8, log=True),
        Knob("cache_policy", choices=("lru", "lfu")),
        Knob("prefetch", choices=("none", "next_layer", "previous_token")),
        Knob("prefetch_depth", low=1, high=2, when={"prefetch": {"not_in": ["none"]}}),
    )
    space = Space(path=DATA / doc["trace"], knobs=knobs, fixed={})
    rows = []
    for frac in np.geomspace(0.02, 0.8, 24):
        for policy in ("lru", "lfu"):
            for pf, depth in (
                ("none", None),
                ("next_layer", 1),
                ("next_layer", 2),
                ("previous_token", 1),
                ("previous_token", 2),
            ):
                cache = int(frac * doc["expert_bytes"]) // 4096 * 4096
                cfg = EngineConfig(
                    cache_bytes=cache, cache_policy=policy, prefetch=pf, prefetch_depth=depth or 1
                )
                est = simulate(trace, cfg, rates=rates)
                params = {"cache_fraction": float(frac), "cache_policy": policy, "prefetch": pf}
                if depth is not None:
                    params["prefetch_depth"] = depth
                rows.append(Row(params, (float(est["decode_tok_s_estimate"]), float(cache))))
    return Objective(
        "trace",
        space,
        Table(space, rows),
        ["maximize", "minimize"],
        [noise, 0.0],
        [1.0, 1.0],
        [noise, 0.0],
        0.0,
        [None, None],
    )


def run(
    obj: Objective,
    sampler: str,
    seed: int,
    n: int,
    racing: bool,
    fidelity: bool,
    lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[list[tuple[float, float]], int]:
    """[(cost so far, hypervolume)] after each trial, and the full probes the cheap one saved."""
    study = optuna.create_study(
        directions=obj.directions,
        sampler=make_sampler(sampler, seed=seed, space=obj.space, n_trials=n),
    )
    rng = np.random.default_rng(seed + 7919)
    spec = RacingSpec()
    measured: list[list[float]] = []
    true: list[tuple[float, ...]] = []
    feasible: list[bool] = []
    seen: list[list[float]] = []
    tol = [max(2 * s, MIN_TOLERANCE) for s in obj.noise]
    cost, saved, hv, curve = 0.0, 0, 0.0, []
    for _ in range(n):
        trial = study.ask()
        row = obj.table.nearest(obj.space.suggest(trial))
        if fidelity and obj.cheap_cost > 0:
            cheap = obj.cheap(row, rng)
            cost += obj.cheap_cost
            keep = promote(cheap, seen, obj.directions, tol)
            seen.append(cheap)
            if not keep:
                study.tell(trial, state=TrialState.PRUNED)
                saved += 1
                curve.append((cost, hv))
                continue
        samples = [obj.measure(row, rng)]
        others = [m for m, f in zip(measured, feasible, strict=True) if f]
        while racing and verdict(samples, others, obj.directions, obj.noise, spec) == "repeat":
            samples.append(obj.measure(row, rng))
        cost += len(samples)
        values = combine(samples)
        ok = True
        for i, limit in enumerate(obj.limits):
            if limit is not None:
                trial.set_constraint(f"c{i}", values[i] - limit)
                ok = ok and values[i] <= limit
        study.tell(trial, values)
        measured.append(values)
        true.append(row.values)
        feasible.append(ok)
        hv = _reported_hv(measured, true, feasible, obj.directions, lo, hi)
        curve.append((cost, hv))
    return curve, saved


def _reported_hv(
    measured: list[list[float]],
    true: list[tuple[float, ...]],
    feasible: list[bool],
    directions: list[str],
    lo: np.ndarray,
    hi: np.ndarray,
) -> float:
    idx = [i for i, f in enumerate(feasible) if f]
    if not idx:
        return 0.0
    meas = losses([measured[i] for i in idx], directions)
    front = _is_pareto_front(meas, assume_unique_lexsorted=False)
    return hypervolume(losses([true[i] for i in np.array(idx)[front]], directions), lo, hi)


def cost_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    return next((c for c, h in curve if h >= target - 1e-12), float("inf"))


def hv_at(curve: list[tuple[float, float]], cost: float) -> float:
    return max((h for c, h in curve if c <= cost + 1e-9), default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument(
        "--gp-trials",
        type=int,
        default=60,
        help="trials for GP: its fit cost grows ~n^3 (60 = the goal of the issue)",
    )
    ap.add_argument("--samplers", default="tpe,gp,random,nsga2,auto")
    ap.add_argument("--objectives", default="table,trace")
    ap.add_argument("--json", type=Path, help="also write every curve here")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        import torch

        torch.set_num_threads(1)  # the GP's small fits gain nothing from threads on a shared box
    except ImportError:
        pass
    doc = json.loads((DATA / "grid_small.json").read_text())
    objs = {
        "table": lambda: table_objective(doc),
        "trace": lambda: trace_objective(doc, float(doc["noise"]["decode_tok_s"])),
    }
    print(
        f"grid: {len(doc['rows'])} measured points, engine {doc['engine_commit']}, "
        f"machine {(doc.get('machine') or {}).get('cpu_model')} "
        f"{(doc.get('machine') or {}).get('cpu_count')} cores; seeds {args.seeds}"
    )
    out: dict[str, Any] = {}
    for name in args.objectives.split(","):
        obj = objs[name]()
        loss = losses([r.values for r in obj.table.rows], obj.directions)
        lo, hi = loss.min(axis=0), loss.max(axis=0)
        print(
            f"\n## {name}: noise {[round(x, 3) for x in obj.noise]}, cheap probe costs "
            f"{obj.cheap_cost:.2f} of a full one"
        )
        curves: dict[str, list[list[tuple[float, float]]]] = {}
        saved: dict[str, list[int]] = {}
        runs = [(s, "plain") for s in args.samplers.split(",")]
        runs += [("tpe", v) for v in VARIANTS if v != "plain"]
        if name == "trace":
            runs = [r for r in runs if "fidelity" not in r[1]]  # the simulator IS the cheap one
        auto, why = choose_sampler("auto", obj.space, args.trials)
        print(f"auto -> {auto} ({why})")
        for sampler, variant in runs:
            n = args.gp_trials if sampler == "gp" else args.trials
            t0 = time.monotonic()
            key = f"{sampler}/{variant}"
            if sampler == "auto" and f"{auto}/{variant}" in curves:
                # the same sampler with the same seeds: the same curves, no need to rerun
                curves[key], saved[key] = curves[f"{auto}/{variant}"], saved[f"{auto}/{variant}"]
                continue
            res = [
                run(obj, sampler, seed, n, *VARIANTS[variant], lo, hi) for seed in range(args.seeds)
            ]
            curves[key] = [c for c, _ in res]
            saved[key] = [s for _, s in res]
            print(f"  ran {key}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
        target = statistics.median(hv_at(c, args.trials) for c in curves["random/plain"])
        print(f"random search's {args.trials}-trial hypervolume (median): {target:.4f}")
        print(
            f"{'sampler/variant':<22} {'cost: median [min, max]':>24} {'hv@25':>7} {'hv@50':>7} "
            f"{'hv@100':>7} {'hv@200':>7} {'full probes saved':>18}"
        )
        for key, cs in curves.items():
            need = sorted(cost_to_reach(c, target) for c in cs)
            budget = max(c[-1][0] for c in cs)
            med = statistics.median(need)
            spread = f"[{_fmt(need[0], budget)}, {_fmt(need[-1], budget)}]"
            hvs = [
                statistics.median(hv_at(c, x) for c in cs) if x <= budget else None
                for x in (25, 50, 100, 200)
            ]
            print(
                f"{key:<22} {_fmt(med, budget) + ' ' + spread:>24} "
                + " ".join("      -" if h is None else f"{h:7.4f}" for h in hvs)
                + f" {statistics.median(saved[key]):>18g}"
            )
        out[name] = {"target": target, "curves": curves, "saved": saved}
    if args.json:
        args.json.write_text(json.dumps(out))


def _fmt(x: float, budget: float) -> str:
    """A cost, or ">budget" when some seeds never got there within their budget."""
    return f">{budget:.0f}" if x == float("inf") else f"{x:.0f}"


if __name__ == "__main__":
    main()
