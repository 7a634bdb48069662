"""Peak RSS of `pack` vs the checkpoint's size: packing must stream, not load the model.

    python benchmarks/pack_memory.py                 # synthesizes the `bench` preset (GBs)
    python benchmarks/pack_memory.py --model DIR     # packs an existing checkpoint instead

Each pack runs in a child process; its peak RSS comes from os.wait4's rusage of that child.
Output: plain `key: value` lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PACK_CHILD = """
import sys
from pathlib import Path
from engine.pack import pack
pack(Path(sys.argv[1]), Path(sys.argv[2]), bits=int(sys.argv[3]), force=True, progress=False)
"""
# The same imports without packing: what any engine process costs before it does work.
BASELINE_CHILD = "import mlx.core, numpy, engine.pack"


def run_child(code: str, *args: str) -> tuple[int, float]:
    """(peak RSS bytes, wall seconds) of one child process running `code`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed with exit code {proc.returncode}: {code.strip()[:60]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - t0  # Linux reports KiB


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="existing checkpoint dir (skips synthesis)")
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "pack_memory")
    ap.add_argument("--family", default="qwen3_moe")
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 4])
    ap.add_argument("--keep", action="store_true", help="keep the stores (and synth model)")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        from engine.synth import synthesize

        model = args.work / f"{args.family}-bench"
        if not (model / "config.json").is_file():
            synthesize(model, family=args.family, preset="bench", seed=0, force=True)

    from engine.checkpoint import open_checkpoint

    ckpt = open_checkpoint(model)
    ckpt_bytes = sum(r.nbytes for r in ckpt.tensors.values())
    largest = max(r.nbytes for r in ckpt.tensors.values())
    print(f"checkpoint: {model}")
    print(f"checkpoint_bytes: {ckpt_bytes}")
    print(f"largest_tensor_bytes: {largest}")
    base_rss, _ = run_child(BASELINE_CHILD)
    print(f"import_baseline_rss_bytes: {base_rss}")
    for bits in args.bits:
        store = args.work / f"store-{bits}b"
        rss, secs = run_child(PACK_CHILD, str(model), str(store), str(bits))
        print(f"pack_{bits}bit_seconds: {secs:.1f}")
        print(f"pack_{bits}bit_store_bytes: {dir_bytes(store)}")
        print(f"pack_{bits}bit_peak_rss_bytes: {rss}")
        print(f"pack_{bits}bit_rss_over_baseline_bytes: {rss - base_rss}")
        print(f"pack_{bits}bit_peak_rss_over_checkpoint: {rss / ckpt_bytes:.4f}")
        if not args.keep:
            shutil.rmtree(store)
    if args.model is None and not args.keep:
        shutil.rmtree(model)


if __name__ == "__main__":
    main()
