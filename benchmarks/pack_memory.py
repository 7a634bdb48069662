"""Peak RSS of `pack` vs the checkpoint's size: packing must stream, not load the model.

    python benchmarks/pack_memory.py                 # synthesizes the `bench` preset (GBs)
    python benchmarks/pack_memory.py --model DIR     # packs an existing checkpoint instead

Each pack runs in a child process; its peak RSS comes from os.wait4's rusage of that child.
Output: plain `key: value` lines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Children print their own high-water RSS (VmHWM): unlike ru_maxrss it is not floored by the
# parent's RSS at fork time, which Linux carries across exec.
HWM = (
    "print('vmhwm_kib', [ln.split()[1] for ln in open('/proc/self/status')"
    " if ln.startswith('VmHWM')][0])"
)
PACK_CHILD = f"""
import sys
from pathlib import Path
from engine.pack import pack
pack(Path(sys.argv[1]), Path(sys.argv[2]), bits=int(sys.argv[3]), force=True, progress=False)
{HWM}
"""
# Opening (validating) the checkpoint without packing: imports + model skeleton, no data.
BASELINE_CHILD = f"""
import sys
import engine.pack
from engine.checkpoint import open_checkpoint
open_checkpoint(sys.argv[1])
{HWM}
"""
SYNTH_CHILD = """
import sys
from pathlib import Path
from engine.synth.hf import synthesize
synthesize(Path(sys.argv[1]), family=sys.argv[2], preset="bench", seed=0, force=True)
"""


def run_child(code: str, *args: str) -> tuple[int, int, float]:
    """(ru_maxrss bytes, VmHWM bytes, wall seconds) of one child process running `code`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed with exit code {proc.returncode}: {code.strip()[:60]}")
    hwm = [int(ln.split()[1]) * 1024 for ln in out.splitlines() if ln.startswith("vmhwm_kib")]
    # Linux reports KiB
    return usage.ru_maxrss * 1024, (hwm or [0])[0], time.perf_counter() - t0


def safetensors_stats(model: Path) -> tuple[int, int]:
    """(total tensor bytes, largest tensor bytes), from the headers only."""
    total = largest = 0
    for f in model.glob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                size = v["data_offsets"][1] - v["data_offsets"][0]
                total, largest = total + size, max(largest, size)
    return total, largest


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
        # In a child, and the parent never imports mlx: a big parent would floor ru_maxrss.
        model = args.work / f"{args.family}-bench"
        if not (model / "config.json").is_file():
            run_child(SYNTH_CHILD, str(model), args.family)

    ckpt_bytes, largest = safetensors_stats(model)
    print(f"checkpoint: {model}")
    print(f"checkpoint_bytes: {ckpt_bytes}")
    print(f"largest_tensor_bytes: {largest}")
    _, base_hwm, _ = run_child(BASELINE_CHILD, str(model))
    print(f"open_checkpoint_rss_bytes: {base_hwm}")
    for bits in args.bits:
        store = args.work / f"store-{bits}b"
        rss, hwm, secs = run_child(PACK_CHILD, str(model), str(store), str(bits))
        print(f"pack_{bits}bit_seconds: {secs:.1f}")
        print(f"pack_{bits}bit_store_bytes: {dir_bytes(store)}")
        print(f"pack_{bits}bit_peak_rss_bytes: {rss}")
        print(f"pack_{bits}bit_vmhwm_bytes: {hwm}")
        print(f"pack_{bits}bit_rss_over_baseline_bytes: {hwm - base_hwm}")
        print(f"pack_{bits}bit_peak_rss_over_checkpoint: {rss / ckpt_bytes:.4f}")
        if not args.keep:
            shutil.rmtree(store)
    if args.model is None and not args.keep:
        shutil.rmtree(model)


if __name__ == "__main__":
    main()
