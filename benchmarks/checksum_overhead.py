"""What checking every expert read against its checksum costs, as a share of decode time.

    .venv/bin/python benchmarks/checksum_overhead.py [--preset tiny] [--repeats 3]

Worst case on purpose: cache_bytes = 0 and a warm page cache, so every routed expert is read
(and hashed) on every token while the reads themselves are cheap memory copies. Runs the same
prompts with the reader's check on and off, interleaved repeat by repeat, and also times the
hash alone over the bytes the run read. Prints `key: value` lines; the goal is
`checksum_share_of_decode` <= 0.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming_vs_resident import ensure_store, suite_for  # noqa: E402

from engine.config import EngineConfig  # noqa: E402
from engine.manifest import checksum  # noqa: E402
from engine.runtime import Engine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "bench"])
    ap.add_argument("--family", default="qwen3_moe")
    ap.add_argument("--bits", type=int, default=4, help="store variant (4-bit: smallest compute)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--decode", type=int, default=24)
    args = ap.parse_args(argv)

    _, store = ensure_store(args.preset, args.family, bits=args.bits)
    suite = suite_for(store, args.prompts, args.decode)
    config = EngineConfig(cache_bytes=0, io_mode="buffered")
    times: dict[bool, list[float]] = {True: [], False: []}
    with Engine(store, config) as engine:
        for p in suite.prompts:  # unmeasured: warms the page cache and MLX kernels
            engine.generate(list(p.ids), p.decode_tokens)
        reads0, bytes0 = engine.reader.reads, engine.reader.bytes_read
        tokens = 0
        for _ in range(args.repeats):
            for check in (True, False):
                engine.reader.verify = check
                for p in suite.prompts:
                    gen = engine.generate(list(p.ids), p.decode_tokens)
                    times[check].append(sum(gen.token_s))
                    tokens += len(gen.token_s) if check else 0
        reads = (engine.reader.reads - reads0) // 2  # the checked half
        nbytes = store.expert_nbytes
    # The hash alone, over as many expert-sized buffers as the checked runs read.
    buf = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
    t0 = time.perf_counter()
    for _ in range(reads):
        checksum(buf)
    hash_s = time.perf_counter() - t0
    on, off = sum(times[True]), sum(times[False])
    print(f"preset: {args.preset} ({args.family}, {args.bits}-bit, expert {nbytes} bytes)")
    print(f"decode_tokens: {tokens}")
    print(f"expert_reads_checked: {reads}")
    print(f"bytes_checked: {(engine.reader.bytes_read - bytes0) // 2}")
    print(f"decode_s_checked: {on:.4f}")
    print(f"decode_s_unchecked: {off:.4f}")
    print(f"median_token_s_checked: {statistics.median(times[True]) / args.decode:.6f}")
    print(f"median_token_s_unchecked: {statistics.median(times[False]) / args.decode:.6f}")
    print(f"hash_only_s: {hash_s:.4f}")
    print(f"checksum_share_of_decode: {hash_s / on:.4f}")
    print(f"decode_slowdown_measured: {on / off - 1:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
