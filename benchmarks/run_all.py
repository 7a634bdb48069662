"""`make bench`: every benchmark in turn, each in its own process, `key: value` lines out.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME[,NAME]]

A benchmark that fails is reported and the rest still run; the exit status is non-zero if any
failed. --quick shrinks the disk sweep and repeat counts for a fast smoke run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, args, quick args); ordered cheapest-to-build first so the store is reused.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "disk_roofline": (
        "disk_roofline.py",
        [],
        ["--size-mib", "256", "--read-mib", "64", "--chunks-kib", "256,1024", "--threads", "1,4"],
    ),
    "pack_memory": ("pack_memory.py", [], []),
    "routing_stats": ("routing_stats.py", [], ["--preset", "tiny"]),
    "streaming_vs_resident": ("streaming_vs_resident.py", [], ["--repeats", "1", "--prompts", "1"]),
    "allmiss_roofline": ("allmiss_roofline.py", [], ["--prompts", "1", "--raw-repeats", "1"]),
    "bench_small": ("bench_small.py", [], []),
    "compute_roofline": (
        "compute_roofline.py",
        ["--io-bound"],
        ["--preset", "small", "--bits", "4", "--tokens", "16", "--prompts", "1", "--no-resident"],
    ),
    "beyond_memory": (
        "beyond_memory.py",
        [],
        ["--layers", "1", "--trials", "10", "--finalists", "1", "--prompts", "1"],
    ),
    "checksum_overhead": ("checksum_overhead.py", [], ["--repeats", "1", "--prompts", "1"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    args = ap.parse_args(argv)
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        script, full, quick = BENCHMARKS[name]
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, str(HERE / script), *(quick if args.quick else full)])
        print(f"{name}_exit: {rc.returncode}")
        print(f"{name}_wall_s: {time.perf_counter() - t0:.1f}", flush=True)
        if rc.returncode != 0:
            failed.append(name)
    print(f"\nbenchmarks_failed: {','.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
