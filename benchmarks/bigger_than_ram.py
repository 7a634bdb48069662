"""A store larger than this machine's RAM, streamed under a 4 GB memory budget.

    .venv/bin/python benchmarks/bigger_than_ram.py [--preset kimi-k2] [--layers 4]
        [--budget-gb 4] [--prompts 2] [--tokens 24] [--keep-checkpoint]

Builds once under build/bench/: `synth --preset PRESET --layers N --quantize 4` (mlx-community's
4-bit layout, as users download these models) and its store; then deletes the checkpoint
unless --keep-checkpoint (the store is self-contained, and both at once need twice the disk).
Kimi K2 at 4 layers (the first dense, 3 MoE layers of 384 experts at the published shapes) is
a ~30 GB store; building it needs ~61 GB of free disk at the peak (checkpoint + store) and
takes ~40 min for synth + ~15 min for pack on a 2-core machine; refused when the store is not
larger than MemTotal.

Each row runs cold (the store evicted from the page cache) in a fresh child process
(`python -m engine probe`) under memory_budget_bytes; the parent samples the child's RSS plus
the store's page-cache pages every 0.5 s from outside the process and reports the peak.
Rows: the engine's defaults, and a streaming config (direct I/O, next-layer prefetch, 8 I/O
threads, cache up to the budget). Prints `key: value` lines: memory peak / budget, decode tok/s,
bytes read per token, hit rate, and the disk roofline (random-read bandwidth / bytes a decode
step reads) with the ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import EngineConfig  # noqa: E402
from engine.measure.diskbench import expert_read_bandwidth  # noqa: E402
from engine.measure.probe import store_files  # noqa: E402
from engine.pagecache import evict_all, resident_bytes_many  # noqa: E402
from engine.store import Store  # noqa: E402
from engine.suite import load_suite  # noqa: E402

BENCH_DIR = ROOT / "build" / "bench"
SAMPLE_S = 0.5
ROWS = {
    "defaults": {},
    "streaming": {
        "cache_bytes": 1 << 40,
        "io_mode": "direct",
        "prefetch": "next_layer",
        "io_threads": 8,
        "compute_wait": "sleep",
    },
}


def ensure_store(preset: str, layers: int, keep_checkpoint: bool) -> Store:
    from engine.pack import pack
    from engine.synth.hf import synthesize

    src = BENCH_DIR / f"{preset}-L{layers}-q4"
    dst = BENCH_DIR / f"{preset}-L{layers}-q4-store"
    if not (dst / "manifest.json").is_file():
        if not (src / "config.json").is_file():
            print(f"note: synthesizing {src} (4-bit, {layers} layers)", file=sys.stderr)
            synthesize(src, preset=preset, seed=0, force=True, layers=layers, quantize=4)
        print(f"note: packing {dst}", file=sys.stderr)
        pack(src, dst, progress=True)
    if not keep_checkpoint and src.exists():
        shutil.rmtree(src)
    return Store.open(dst)


def store_bytes(store: Store) -> int:
    return sum(f.stat().st_size for f in store.root.rglob("*") if f.is_file())


def trimmed_suite(store: Store, prompts: int, tokens: int, out: Path) -> Path:
    """The store's own suite cut to `prompts` prompts of `tokens` decode tokens."""
    vocab = int(store.config.get("vocab_size") or 0)
    suite = load_suite(store.dense_dir / "probe_suite.toml", vocab_size=vocab)
    lines = [f'name = "{suite.name}-trimmed"', f"seed = {suite.seed}"]
    for p in suite.prompts[:prompts]:
        lines += ["", "[[prompts]]", f"ids = {list(p.ids)}", f"decode_tokens = {tokens}"]
    out.write_text("\n".join(lines) + "\n")
    return out


class OutsideSampler(threading.Thread):
    """Peak of a child's RSS + the store's page-cache pages, read from /proc and mincore."""

    def __init__(self, pid: int, files: list[Path]) -> None:
        super().__init__(daemon=True)
        self.pid, self.files, self.peak, self.samples = pid, files, 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop_event.wait(SAMPLE_S):
            try:
                with open(f"/proc/{self.pid}/statm") as f:
                    rss = int(f.read().split()[1]) * page
            except (OSError, IndexError, ValueError):
                return  # the child is gone
            self.peak = max(self.peak, rss + resident_bytes_many(self.files))
            self.samples += 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def run_row(store: Store, knobs: dict, budget: int, suite: Path, tmp: Path) -> dict:
    cfg = EngineConfig(memory_budget_bytes=budget, **knobs)
    cfg_path = tmp / "config.toml"
    cfg.to_toml(cfg_path)
    files = store_files(store)
    evict_all(files)
    argv = [
        sys.executable,
        "-m",
        "engine",
        "probe",
        str(store.root),
        "--config",
        str(cfg_path),
        "--suite",
        str(suite),
        "--cold",
        "--no-quality",
        "--json",
    ]
    t0 = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = OutsideSampler(child.pid, files)
    sampler.start()
    out, err = child.communicate()
    sampler.stop()
    if child.returncode != 0:
        return {"error": (err.strip().splitlines() or ["?"])[-1], "peak": sampler.peak}
    m = json.loads(out)
    m["peak"], m["samples"], m["wall_s"] = sampler.peak, sampler.samples, time.monotonic() - t0
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="kimi-k2")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--budget-gb", type=float, default=4.0, help="memory budget, 10^9 bytes")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24, help="decode tokens per prompt")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    ap.add_argument("--keep-checkpoint", action="store_true")
    args = ap.parse_args(argv)
    store = ensure_store(args.preset, args.layers, args.keep_checkpoint)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # MemTotal
    size, budget = store_bytes(store), int(args.budget_gb * 1e9)
    print(f"store: {store.root}")
    print(
        f"store_bytes: {size}  (RAM {ram}: x{size / ram:.2f}; "
        f"budget {budget}: x{size / budget:.1f})"
    )
    if size <= ram:
        print(
            f"error: the store ({size:,} B) is not larger than RAM ({ram:,} B); raise --layers",
            file=sys.stderr,
        )
        return 2
    disk = expert_read_bandwidth(store, 512 << 20)
    print(f"disk_random_read_gb_s: {disk:.2f}  (direct, 8 threads, one expert per read)")
    with tempfile.TemporaryDirectory(prefix="bigger-than-ram-") as tmp:
        suite = trimmed_suite(store, args.prompts, args.tokens, Path(tmp) / "suite.toml")
        for name in args.rows.split(","):
            r = run_row(store, ROWS[name], budget, suite, Path(tmp))
            if "error" in r:
                print(f"{name}_error: {r['error']}  (peak sampled {r['peak']})")
                continue
            print(
                f"{name}_memory_peak_sampled: {r['peak']}  (x{r['peak'] / budget:.3f} of the "
                f"budget, {r['samples']} samples; probe's own: {r['memory_bytes']})"
            )
            print(f"{name}_decode_tok_s: {r['decode_tok_s']:.3f}")
            print(f"{name}_ttft_s: {r['ttft_s']:.1f}")
            print(f"{name}_bytes_read_per_token: {r['bytes_read_per_token']:.0f}")
            print(f"{name}_cache_hit_rate: {r['cache_hit_rate']:.3f}")
            step = r["decode_bytes_read_per_token"]
            roof = disk * 1e9 / max(step, 1)
            print(
                f"{name}_disk_roofline_tok_s: {roof:.3f}  (ratio {r['decode_tok_s'] / roof:.2f}; "
                f"a decode step reads {step / 1e6:.0f} MB)"
            )
            print(f"{name}_wall_s: {r['wall_s']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
