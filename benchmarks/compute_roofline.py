"""All-cached decode against the RAM-bandwidth roofline, per store precision (goal >= 0.3).

    .venv/bin/python benchmarks/compute_roofline.py [--preset bench] [--bits 16,8,4]
        [--tokens 48] [--io-bound]

For each store (the preset packed at each --bits), side by side in one process:
- the RAM bandwidth now, all cores (one numpy sum per core over its half of 1 GiB);
- the weight bytes one decode token must touch: top-k experts of every MoE layer at the
  store's precision + every dense weight at its own (the embedding table excluded when the
  model has a separate lm_head) -> roofline tok/s = bandwidth / bytes;
- the engine with every expert cached (CPU compute path): sustained decode tok/s, ratio to the
  roofline, host syncs per token, where a token's time goes (kernels / MLX evaluation at the
  host syncs / I/O wait / the rest: Python, numpy glue, MLX graph building), and TTFT of the
  suite's prompts;
- mlx-lm's own resident model (float32, MLX's CPU BLAS) on the same prompt;
- with --io-bound: cache 10% of the experts, direct I/O, next_layer prefetch, compute_wait
  sleep (what a tuned user runs there: spinning kernel threads take the cores the readers
  need), in a fresh process (the wait policy is fixed when the threads start): decode tok/s,
  io_stall_fraction, and time/token beside the disk bound (bytes read per token / the store's
  random-read bandwidth at the same read size and threads) and the all-cached compute time;
  the row says which one bounds it.
Prints `key: value` lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.streaming_vs_resident import ensure_store, suite_for  # noqa: E402
from engine import kernels as K  # noqa: E402
from engine.config import EngineConfig  # noqa: E402
from engine.cpu_linear import HOST  # noqa: E402
from engine.generate import generate  # noqa: E402
from engine.model import load_reference  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from engine.store import Store  # noqa: E402


def ram_bandwidth_gb_s(cores: int, total: int = 1 << 30, repeats: int = 3) -> float:
    """GB/s of `cores` threads each summing its own share of a `total`-byte array."""
    a = np.ones(total // 8, np.float64)
    parts = np.array_split(a, cores)
    best = 0.0
    for _ in range(repeats):
        ths = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        t0 = time.perf_counter()
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        best = max(best, a.nbytes / (time.perf_counter() - t0) / 1e9)
    return best


def bytes_per_token(store: Store, top_k: int) -> int:
    """Weights one decode token touches at their stored precision."""
    experts = top_k * len(store.layers) * store.expert_nbytes
    header = json.loads(_safetensors_header(store.dense_dir / "model.safetensors"))
    sizes = {
        k: v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if k != "__metadata__"
    }
    tied = not any("lm_head" in k for k in sizes)
    dense = sum(n for k, n in sizes.items() if tied or "embed_tokens" not in k)
    return experts + dense


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return f.read(n)


class KernelClock:
    """Seconds spent inside the engine's kernels (wraps the module functions the engine calls)
    and in the host syncs: an MLX->numpy conversion waits for MLX to evaluate the graph
    behind it (attention, and where layers are not host-chained, norms and routing), so that
    time is MLX's compute plus the hand-over."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.sync_seconds = 0.0
        self.syncs = 0
        self.by_kernel: dict[str, float] = {}
        self._orig = {name: getattr(K, name) for name in ("expert_ffn", "linear")}

    def __enter__(self) -> KernelClock:
        for name, fn in self._orig.items():
            setattr(K, name, self._timed(name, fn))
        to_host = HOST.to_host
        self._syncs0 = HOST.syncs

        def timed_to_host(x, dtype=mx.float32):  # type: ignore[no-untyped-def]
            n0, t0 = HOST.syncs, time.perf_counter()
            out = to_host(x, dtype)
            if HOST.syncs != n0:  # a conversion, not an array handed over from numpy
                self.sync_seconds += time.perf_counter() - t0
            return out

        HOST.to_host = timed_to_host  # type: ignore[method-assign]
        return self

    def _timed(self, name, fn):  # type: ignore[no-untyped-def]
        def run(*args):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            fn(*args)
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.by_kernel[name] = self.by_kernel.get(name, 0.0) + dt

        return run

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._orig.items():
            setattr(K, name, fn)
        del HOST.to_host  # the instance attribute: back to the method
        self.syncs = HOST.syncs - self._syncs0


def all_cached(store: Store, prompts: list[list[int]], tokens: int, warmup: int) -> dict:
    cfg = EngineConfig(cache_bytes=1 << 40, compute_path="cpu")
    with Engine(store, cfg) as eng:
        for p in prompts:  # unmeasured: fills the cache with every expert the prompts use
            eng.generate(p, tokens)
        ttfts, lat = [], []
        c0 = eng.counters()
        with KernelClock() as kc:
            for p in prompts:
                g = eng.generate(p, tokens)
                ttfts.append(g.ttft_s)
                lat.extend(g.token_s[warmup:])
            wall = sum(lat) + sum(ttfts)
        c1 = eng.counters()
        passes = len(prompts) * tokens  # one prefill + (tokens - 1) decode steps per prompt
        return {
            "syncs_per_token": kc.syncs / passes,
            "sync_share": kc.sync_seconds / wall,
            "chained_layers": eng.chained_layers,
            "host_attention_layers": eng.host_attention_layers,
            "layers": len(store.layers),
            "decode_tok_s": len(lat) / sum(lat),
            "ttft_s": statistics.median(ttfts),
            "kernel_share": kc.seconds / wall,
            "expert_share": kc.by_kernel.get("expert_ffn", 0.0) / wall,
            "io_wait_share": (c1["read_wait_s"] - c0["read_wait_s"]) / wall,
            "hit_rate": (c1["cache_hits"] - c0["cache_hits"])
            / max(c1["expert_requests"] - c0["expert_requests"], 1),
            "top_k": eng.top_k,
        }


def resident(src: Path, prompt: list[int], tokens: int, warmup: int) -> float:
    import gc

    model = load_reference(src)
    try:
        generate(model, prompt, 4)
        g = generate(model, prompt, tokens)
    finally:
        # The float32 model is ~2x the checkpoint (10 GB at 16 bits); MLX would keep its freed
        # buffers cached, and the next store's rows measured beside them ran ~15% slower.
        del model
        gc.collect()
        mx.clear_cache()
    lat = g.token_s[warmup:]
    return len(lat) / sum(lat)


def io_bound(store: Store, prompts: list[list[int]], tokens: int, warmup: int) -> dict:
    """Decode tok/s over the sustained steps; stall share, bytes read and time per token over
    whole generations (prompt included), so the disk bound compares like with like."""
    from engine.arena import slot_bytes
    from engine.measure.probe import store_files
    from engine.pagecache import evict_all

    # no Engine before this one: the first starts the kernels' threads with its wait policy
    cache = slot_bytes(store) * store.num_experts * len(store.layers) // 10
    cfg = EngineConfig(
        cache_bytes=cache,
        io_mode="direct",
        prefetch="next_layer",
        io_threads=8,
        compute_path="cpu",
        compute_wait="sleep",
    )
    evict_all(store_files(store))
    with Engine(store, cfg) as eng:
        lat, wall, decode_bytes = [], 0.0, 0
        c0 = eng.counters()
        for p in prompts:
            seen: list[dict] = []  # counters after each token; [warmup]: the measured steps start

            def on_token(_tok: int, seen: list[dict] = seen) -> None:
                seen.append(eng.counters())

            g = eng.generate(p, tokens, on_token=on_token)
            lat.extend(g.token_s[warmup:])
            wall += g.ttft_s + sum(g.token_s)
            decode_bytes += seen[-1]["bytes_read"] - seen[warmup]["bytes_read"]
        c1 = eng.counters()
    n_tok = len(prompts) * tokens
    return {
        "decode_tok_s": len(lat) / sum(lat),
        # the measured decode steps' own reads: what decode_tok_s is bound by (the prompts'
        # reads, ~1 GB each at 10% cached, would inflate it)
        "decode_bytes_per_token": decode_bytes / len(lat),
        "io_stall_fraction": (c1["stall_s"] - c0["stall_s"]) / wall,
        "bytes_read_per_token": (c1["bytes_read"] - c0["bytes_read"]) / n_tok,
        "time_per_token_s": wall / n_tok,
        "cache_bytes": cache,
    }


def io_row(store: Store, prompts: list[list[int]], tokens: int, warmup: int) -> dict:
    """The I/O-bound config plus the disk bound at its read size; run in a fresh process."""
    from engine.measure.diskbench import expert_read_bandwidth

    io = io_bound(store, prompts, tokens, warmup)
    io["disk_gb_s"] = expert_read_bandwidth(store)
    return io


def io_row_in_child(args: argparse.Namespace, bits: int) -> dict:
    import subprocess

    cmd = [
        sys.executable,
        __file__,
        "--preset",
        args.preset,
        "--bits",
        str(bits),
        "--tokens",
        str(args.tokens),
        "--prompts",
        str(args.prompts),
        "--warmup",
        str(args.warmup),
        "--io-row-json",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="bench", choices=["tiny", "small", "bench"])
    ap.add_argument("--bits", default="16,8,4")
    ap.add_argument("--tokens", type=int, default=40, help="decode tokens per prompt")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=4, help="first decode steps excluded")
    ap.add_argument("--io-bound", action="store_true", help="also run the I/O-bound config")
    ap.add_argument("--no-resident", action="store_true", help="skip mlx-lm resident (slow)")
    ap.add_argument("--io-row-json", action="store_true", help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)
    import os

    if args.io_row_json:
        src, store = ensure_store(args.preset, bits=int(args.bits))
        prompts = [list(p.ids) for p in suite_for(store, args.prompts, args.tokens).prompts]
        print(json.dumps(io_row(store, prompts, args.tokens, args.warmup)))
        return 0
    cores = os.cpu_count() or 1
    bw = ram_bandwidth_gb_s(cores)
    print(f"ram_bandwidth_gb_s: {bw:.1f}  (cores: {cores})")
    for bits in [int(b) for b in args.bits.split(",")]:
        src, store = ensure_store(args.preset, bits=bits)
        suite = suite_for(store, args.prompts, args.tokens)
        prompts = [list(p.ids) for p in suite.prompts]
        tag = f"b{bits}"
        r = all_cached(store, prompts, args.tokens, args.warmup)
        need = bytes_per_token(store, r["top_k"])
        roof = bw * 1e9 / need
        print(f"{tag}_bytes_per_token: {need}")
        print(f"{tag}_roofline_tok_s: {roof:.1f}")
        print(f"{tag}_all_cached_decode_tok_s: {r['decode_tok_s']:.2f}")
        print(f"{tag}_roofline_ratio: {r['decode_tok_s'] / roof:.3f}")
        print(
            f"{tag}_host_syncs_per_token: {r['syncs_per_token']:.1f}  "
            f"({r['layers']} layers, {r['chained_layers']} host-chained: one sync each, "
            f"{r['host_attention_layers']} of them with a decode step's attention on the host "
            "too: none; + embedding and lm_head; prompts included)"
        )
        dense = r["kernel_share"] - r["expert_share"]
        print(
            f"{tag}_time_share_kernels: {r['kernel_share']:.2f}  "
            f"(experts {r['expert_share']:.2f}, dense {dense:.2f})"
        )
        print(
            f"{tag}_time_share_mlx_at_syncs: {r['sync_share']:.2f}  "
            "(MLX evaluating what the syncs wait for: attention core, embedding, "
            "final norm)"
        )
        print(f"{tag}_time_share_io_wait: {r['io_wait_share']:.2f}")
        rest = 1 - r["kernel_share"] - r["sync_share"] - r["io_wait_share"]
        print(
            f"{tag}_time_share_other: {rest:.2f}"
            "  (Python, numpy glue: norms, routing, residuals; MLX graph building)"
        )
        print(f"{tag}_ttft_s: {r['ttft_s']:.3f}  (prompt tokens: {len(prompts[0])})")
        if not args.no_resident:
            res = resident(src, prompts[0], args.tokens, args.warmup)
            print(f"{tag}_mlx_lm_resident_decode_tok_s: {res:.2f}  (float32, 16-bit weights)")
            print(f"{tag}_all_cached_over_resident: {r['decode_tok_s'] / res:.2f}")
        if args.io_bound:
            io = io_row_in_child(args, bits)
            io_s = io["bytes_read_per_token"] / (io["disk_gb_s"] * 1e9)
            comp = 1 / r["decode_tok_s"]
            per_tok = io["time_per_token_s"]  # whole generations, like the bytes read
            print(
                f"{tag}_io_bound_cache_bytes: {io['cache_bytes']}  "
                "(10% of experts, direct I/O, next_layer prefetch, 8 threads, "
                "compute_wait sleep)"
            )
            dec_s = io["decode_bytes_per_token"] / (io["disk_gb_s"] * 1e9)
            print(
                f"{tag}_io_bound_decode_tok_s: {io['decode_tok_s']:.2f}  (disk bound "
                f"{1 / dec_s:.2f}: {io['decode_bytes_per_token'] / 1e6:.1f} MB read per decode "
                f"step at {io['disk_gb_s']:.2f} GB/s random reads; at "
                f"{io['decode_tok_s'] * dec_s:.2f} of it)"
            )
            print(f"{tag}_io_bound_io_stall_fraction: {io['io_stall_fraction']:.2f}")
            print(
                f"{tag}_io_bound_disk_bound_tok_s: {1 / io_s:.2f}  (prompts included: "
                f"{io['bytes_read_per_token'] / 1e6:.1f} MB read per token)"
            )
            which = "disk" if io_s >= comp else "compute"
            print(
                f"{tag}_io_bound_time_per_token_s: {per_tok:.4f}  (prompts included; "
                f"disk {io_s:.4f}, all-cached compute {comp:.4f}: {which}-bound, "
                f"at {max(io_s, comp) / per_tok:.2f} of that bound)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
