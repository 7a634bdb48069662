"""Disk read roofline: GB/s by io_mode x read size x threads, cold (evicted) every time.

    .venv/bin/python benchmarks/disk_roofline.py [--size-mib 1024] [--dir /var/tmp]

Writes a temp file on the real disk (not tmpfs: pytest-style /tmp may be RAM), evicts it from
the page cache before each measurement, and prints `key: value` lines plus a table. The best
figure is the roofline `bench` compares a config's expert-read bandwidth against.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.errors import ReadError
from engine.measure.diskbench import make_test_file, measure_read_bandwidth

KiB, MiB = 1 << 10, 1 << 20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024, help="temp file size (512-1024 typical)")
    ap.add_argument("--read-mib", type=int, default=256, help="bytes read per measurement")
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to measure")
    ap.add_argument("--chunks-kib", default="64,256,1024,4096", help="read sizes, KiB")
    ap.add_argument("--threads", default="1,2,4,8", help="thread counts (queue depth)")
    ap.add_argument("--modes", default="direct,buffered", help="io modes: direct,buffered,mmap")
    ap.add_argument("--pattern", default="sequential", choices=["sequential", "random"])
    args = ap.parse_args(argv)
    chunks = [int(x) * KiB for x in args.chunks_kib.split(",")]
    threads = [int(x) for x in args.threads.split(",")]
    modes = args.modes.split(",")

    results: dict[tuple[str, int, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="disk-roofline-", dir=args.dir) as d:
        path = Path(d) / "roofline.bin"
        t0 = time.perf_counter()
        make_test_file(path, args.size_mib * MiB)
        print(f"file: {path}")
        print(f"file_bytes: {path.stat().st_size}")
        print(f"write_s: {time.perf_counter() - t0:.2f}")
        print(f"pattern: {args.pattern}")
        for mode in modes:
            for chunk in chunks:
                for nt in threads:
                    try:
                        gbs = measure_read_bandwidth(
                            path, chunk, nt, mode, args.read_mib * MiB, pattern=args.pattern
                        )
                    except ReadError as e:
                        print(f"{mode}_error: {e}")
                        break
                    results[(mode, chunk, nt)] = gbs
                    print(f"{mode}_{chunk // KiB}k_t{nt}_gb_s: {gbs:.3f}")

    if not results:
        return 1
    best = max(results, key=results.__getitem__)
    print(f"roofline_gb_s: {results[best]:.3f}")
    print(f"roofline_at: {best[0]} {best[1] // KiB}KiB x{best[2]} threads")
    for mode in modes:
        qd1 = [v for (m, c, t), v in results.items() if m == mode and t == 1]
        if qd1:
            print(f"{mode}_best_qd1_gb_s: {max(qd1):.3f}")

    table = Table(title=f"read GB/s ({args.pattern}, cold)")
    table.add_column("mode")
    table.add_column("chunk")
    for nt in threads:
        table.add_column(f"{nt} thr", justify="right")
    for mode in modes:
        for chunk in chunks:
            cells = [results.get((mode, chunk, nt)) for nt in threads]
            if any(c is not None for c in cells):
                label = f"{chunk // KiB} KiB" if chunk < MiB else f"{chunk // MiB} MiB"
                table.add_row(mode, label, *("-" if c is None else f"{c:.2f}" for c in cells))
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
