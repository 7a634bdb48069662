"""The regime we exist for: a real-shape model whose experts are N x the memory budget.

    .venv/bin/python benchmarks/beyond_memory.py [--preset qwen3-30b-a3b] [--layers 6]
        [--oversubscription 4] [--trials 100] [--finalists 3] [--prompts 2] [--tokens 24]

Builds (once, under build/bench/) the preset at --layers layers in mlx-community's 4-bit layout
and its store; the budget is the engine's own minimum for this store plus 1/N of its expert
bytes (EngineConfig.expert_memory_fraction = 1/N), so the cache and the page cache together
hold at most 1/N of the experts. Then, side by side in one run, every row cold (the store
evicted from the page cache first) and in a fresh process of its own (memory is per process):
- naive streaming (bench's baseline: each routed expert read from the checkpoint per token);
- the engine's defaults under the budget;
- the best config a study found: a --trials trial Optuna search scored by the trace simulator
  (a routing trace recorded once, disk and compute rates measured here), its --finalists best
  measured for real with compute_wait spin and sleep (knobs the simulator does not model),
  the defaults among the candidates (a study's baseline); the fastest is measured again,
  interleaved with the defaults, and both report the mean of two runs;
- all experts cached, where that fits in this machine's RAM.
Prints `key: value` lines: decode tok/s per row, bytes read per token, hit rate, and
tuned/default and tuned/naive; then what bounds the tuned config (disk roofline at its miss
rate, all-cached compute, prefetch recall). Goals: tuned >= 2x defaults and >= 6x naive.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from engine.cli.bench import _config_row, _naive_row, _suite  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.measure.diskbench import expert_read_bandwidth  # noqa: E402
from engine.measure.probe import measure_once  # noqa: E402
from engine.measure.simulate import Rates, simulate  # noqa: E402
from engine.measure.trace import Trace  # noqa: E402
from engine.procstats import available_ram_bytes  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.suite import Suite  # noqa: E402

BENCH_DIR = ROOT / "build" / "bench"


def ensure_model(preset: str, layers: int) -> tuple[Path, Store]:
    from engine.pack import pack
    from engine.synth.hf import synthesize

    src = BENCH_DIR / f"{preset}-L{layers}-q4"
    if not (src / "config.json").is_file():
        print(f"note: synthesizing {src} (4-bit, {layers} layers)", file=sys.stderr)
        synthesize(src, preset=preset, seed=0, force=True, layers=layers, quantize=4)
    dst = BENCH_DIR / f"{preset}-L{layers}-q4-store"
    if not (dst / "manifest.json").is_file():
        print(f"note: packing {dst}", file=sys.stderr)
        return src, pack(src, dst, force=True)
    return src, Store.open(dst)


def _child(
    kind: str,
    store_path: str,
    src: str,
    cfg: dict | None,
    prompts: int,
    tokens: int,
    trace_to: str | None = None,
) -> dict:
    """One row, run in a fresh process (see _fresh)."""
    store = Store.open(store_path)
    suite = _suite_of(store, prompts, tokens)
    if kind == "naive":
        return _naive_row(store, Path(src), suite)
    config = EngineConfig.from_dict(cfg or {})
    if kind == "trace":
        m, trace = measure_once(store, config, suite, cold=True, trace=True)
        assert trace is not None and trace_to is not None
        trace.save(trace_to)
        with Engine(store, config) as eng:
            m["cache_bytes"] = eng.cache_bytes  # what the budget leaves the cache
        return m
    return _config_row(store, config, suite)


def _fresh(*args: object) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
        return ex.submit(_child, *args).result()


def _suite_of(store: Store, prompts: int, tokens: int) -> Suite:
    suite = _suite(store, None)
    ps = tuple(replace(p, decode_tokens=tokens) for p in suite.prompts[:prompts])
    return replace(suite, prompts=ps)


def search(
    store: Store, fraction: float, args: argparse.Namespace, disk: float
) -> list[EngineConfig]:
    """Optuna over the knobs the simulator models, scored on a routing trace recorded once."""
    base = EngineConfig(expert_memory_fraction=fraction, io_mode="direct", prefetch="none")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "trace.npz")
        m = _fresh("trace", str(store.root), "", base.to_dict(), args.prompts, args.tokens, path)
        trace = Trace.load(path)
    cache = int(m["cache_bytes"])
    # Compute per token: the measured decode time less the time it stalled on reads.
    compute_s = (1 - m["io_stall_fraction"]) / m["decode_tok_s"]
    rates = Rates(compute_s_per_token=compute_s, disk_bytes_per_s=disk * 1e9)

    def objective(trial: optuna.Trial) -> float:
        prefetch = trial.suggest_categorical("prefetch", ["none", "next_layer", "previous_token"])
        cfg = base.replace(
            cache_bytes=cache,
            cache_policy=trial.suggest_categorical("cache_policy", ["lru", "lfu"]),
            prefetch=prefetch,
            prefetch_depth=trial.suggest_int("prefetch_depth", 1, 3),
            prefetch_width=trial.suggest_int("prefetch_width", 4, 32, log=True),
        )
        est = simulate(trace, cfg, rates=rates)["decode_tok_s_estimate"]
        trial.set_user_attr("config", cfg.to_dict())
        return float(est)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=args.trials)
    best = sorted(study.trials, key=lambda t: -(t.value or 0))
    seen, out = set(), []
    for t in best:
        key = tuple(sorted(t.user_attrs["config"].items()))
        if key not in seen:
            seen.add(key)
            out.append(EngineConfig.from_dict(t.user_attrs["config"]))
        if len(out) == args.finalists:
            break
    # Knobs the simulator does not model, tried for real on the finalists: a deeper read queue,
    # and whether the kernels' idle threads spin or sleep (sleeping leaves the cores to the
    # readers, which pays when reads dominate).
    return [c.replace(io_threads=8, compute_wait=w) for c in out for w in ("spin", "sleep")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="qwen3-30b-a3b")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--oversubscription", type=float, default=4.0)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args(argv)

    src, store = ensure_model(args.preset, args.layers)
    experts = store.expert_nbytes * store.num_experts * len(store.layers)
    fraction = 1 / args.oversubscription
    budgeted = EngineConfig(expert_memory_fraction=fraction)
    print(f"model: {args.preset} x {args.layers} layers, 4-bit; experts_bytes: {experts}")
    print(
        f"memory budget: the engine's minimum + experts / {args.oversubscription:g} "
        f"(expert_memory_fraction = {fraction:.3f})"
    )
    run = (str(store.root), str(src))
    rows: dict[str, dict] = {}
    disk = expert_read_bandwidth(store)  # GB/s: the simulator's rate and the disk bound
    rows["naive"] = _fresh("naive", *run, None, args.prompts, args.tokens)
    rows["defaults"] = _fresh("config", *run, budgeted.to_dict(), args.prompts, args.tokens)
    # The study's candidates: its baseline (the defaults, as every autoresearch study has) and
    # the simulator's finalists, each measured once; the fastest is measured again interleaved
    # with the defaults and both rows report the mean of their two runs (one lucky run of the
    # winner would flatter it).
    measured = [(rows["defaults"], budgeted)] + [
        (_fresh("config", *run, c.to_dict(), args.prompts, args.tokens), c)
        for c in search(store, fraction, args, disk)
    ]
    best_row, best_cfg = max(measured, key=lambda rc: rc[0].get("decode_tok_s", 0.0))
    again = _fresh("config", *run, best_cfg.to_dict(), args.prompts, args.tokens)
    rows["defaults"] = _mean_row(
        rows["defaults"], _fresh("config", *run, budgeted.to_dict(), args.prompts, args.tokens)
    )
    rows["tuned"] = _mean_row(best_row, again)
    ram = available_ram_bytes() or 0
    if 2 * experts < 0.8 * ram:
        every = EngineConfig(cache_bytes=experts * 2).to_dict()
        rows["all_cached"] = _fresh("config", *run, every, args.prompts, args.tokens)
    for name, r in rows.items():
        if r.get("status", "ok") != "ok":
            print(f"{name}: skipped ({r.get('reason')})")
            continue
        print(f"{name}_decode_tok_s: {r['decode_tok_s']:.2f}")
        print(f"{name}_bytes_read_per_token: {r.get('bytes_read_per_token', 0):.0f}")
        print(f"{name}_cache_hit_rate: {r.get('cache_hit_rate', 0):.3f}")
    print(f"tuned_config: {best_cfg.to_dict()}")
    tuned = rows["tuned"]["decode_tok_s"]
    print(f"tuned_over_defaults: {tuned / rows['defaults']['decode_tok_s']:.2f}  (goal >= 2)")
    if rows["naive"].get("status", "ok") == "ok":
        print(f"tuned_over_naive: {tuned / rows['naive']['decode_tok_s']:.2f}  (goal >= 6)")
    per_tok = rows["tuned"].get("bytes_read_per_token", 0) or 1
    print(
        f"bound_disk_roofline_tok_s: {disk * 1e9 / per_tok:.2f}  (disk {disk:.2f} GB/s random "
        f"expert reads, at the tuned miss rate)"
    )
    bounds = {"disk": disk * 1e9 / per_tok}
    if "all_cached" in rows:
        bounds["compute"] = rows["all_cached"]["decode_tok_s"]
        print(f"bound_compute_tok_s: {bounds['compute']:.2f}  (all cached)")
    need = 2 * rows["defaults"]["decode_tok_s"]
    below = [f"{k} {v:.2f}" for k, v in bounds.items() if v < need]
    print(
        f"goal_2x_defaults_needs_tok_s: {need:.2f}  "
        + (
            f"(above the {', '.join(below)} tok/s bound: unreachable here)"
            if below
            else "(under every bound measured)"
        )
    )
    return 0


def _mean_row(a: dict, b: dict) -> dict:
    """Two runs of one config as one row: speed and per-token figures averaged."""
    if a.get("status", "ok") != "ok" or b.get("status", "ok") != "ok":
        return a
    keys = ("decode_tok_s", "bytes_read_per_token", "cache_hit_rate")
    return {**a, **{k: (a.get(k, 0) + b.get(k, 0)) / 2 for k in keys}, "runs": 2}


if __name__ == "__main__":
    sys.exit(main())
