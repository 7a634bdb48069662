"""All-experts-cached streaming vs mlx-lm resident on the same model (goal: ratio >= 0.95).

    .venv/bin/python benchmarks/streaming_vs_resident.py [--preset small] [--repeats 3]

Both run greedy decoding of the same prompts in one process, interleaved repeat by repeat (so a
noisy neighbour slows both alike), after one unmeasured pass each: the engine's cache then
holds every expert, so the difference is compute path + per-layer overhead, not I/O. Prints
`key: value` lines; `decode_ratio` is streaming tok/s / resident tok/s from median latencies.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.generate import generate  # noqa: E402
from engine.model import load_reference  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.suite import Suite, default_suite_path, load_suite  # noqa: E402

BENCH_DIR = ROOT / "build" / "bench"


def ensure_store(
    preset: str = "small", family: str = "qwen3_moe", bits: int = 16, root: Path = BENCH_DIR
) -> tuple[Path, Store]:
    """(source checkpoint, packed store) for a synthetic preset, built once and reused."""
    from engine.pack import pack
    from engine.synth.hf import synthesize

    src = root / f"{preset}-{family}"
    if not (src / "config.json").is_file():
        print(f"note: synthesizing {src}", file=sys.stderr)
        synthesize(src, family=family, preset=preset, seed=0, force=True)
    dst = root / f"{preset}-{family}-b{bits}"
    if not (dst / "manifest.json").is_file():
        print(f"note: packing {dst}", file=sys.stderr)
        return src, pack(src, dst, bits=bits, force=True, progress=False)
    return src, Store.open(dst)


def suite_for(store: Store, prompts: int, decode: int | None) -> Suite:
    suite = load_suite(default_suite_path(store.root), vocab_size=int(store.config["vocab_size"]))
    from dataclasses import replace

    ps = tuple(replace(p, decode_tokens=decode or p.decode_tokens) for p in suite.prompts[:prompts])
    return replace(suite, prompts=ps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "bench"])
    ap.add_argument("--family", default="qwen3_moe")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2, help="suite prompts used per repeat")
    ap.add_argument("--decode", type=int, default=32, help="decode tokens per prompt")
    args = ap.parse_args(argv)

    src, store = ensure_store(args.preset, args.family)
    suite = suite_for(store, args.prompts, args.decode)
    warm = suite.warmup_tokens
    resident = load_reference(src)
    config = EngineConfig(cache_bytes=1 << 40)  # holds every expert: nothing is evicted
    with Engine(store, config) as engine:
        models = {"resident": resident, "streaming": engine.model}
        for m in models.values():  # unmeasured pass: fills the cache, warms MLX kernels
            for p in suite.prompts:
                generate(m, list(p.ids), p.decode_tokens)
        before = engine.counters()
        lat: dict[str, list[float]] = {k: [] for k in models}
        ttft: dict[str, list[float]] = {k: [] for k in models}
        agree = True
        for r in range(args.repeats):
            order = list(models) if r % 2 == 0 else list(models)[::-1]
            for p in suite.prompts:
                toks = {}
                for name in order:
                    g = generate(models[name], list(p.ids), p.decode_tokens)
                    lat[name].extend(g.token_s[warm:])
                    ttft[name].append(g.ttft_s)
                    toks[name] = g.tokens
                agree = agree and toks["resident"] == toks["streaming"]
        c = engine.counters()
    hits = c["cache_hits"] - before["cache_hits"]
    reqs = c["expert_requests"] - before["expert_requests"]

    print(f"model: {src.name} ({store.num_experts} experts, top-{store.top_k}, {store.bits}-bit)")
    print(f"compute_dtype: {config.compute_dtype}")
    print(f"decode_tokens_measured: {len(lat['resident'])} per model ({warm} warm-up/prompt out)")
    for name in models:
        med = statistics.median(lat[name])
        print(f"{name}_decode_tok_s: {1 / med:.2f}")
        print(f"{name}_decode_p90_ms: {1e3 * statistics.quantiles(lat[name], n=10)[-1]:.2f}")
        print(f"{name}_ttft_s: {statistics.median(ttft[name]):.4f}")
    print(f"streaming_cache_hit_rate: {hits / reqs if reqs else 0.0:.4f}")
    print(f"same_tokens: {agree}")
    ratio = statistics.median(lat["resident"]) / statistics.median(lat["streaming"])
    print(f"decode_ratio: {ratio:.3f}")
    ttft_ratio = statistics.median(ttft["resident"]) / statistics.median(ttft["streaming"])
    print(f"ttft_ratio: {ttft_ratio:.3f}")
    print(f"goal_0_95_met: {ratio >= 0.95}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
