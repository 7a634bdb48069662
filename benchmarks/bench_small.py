"""The `bench` table for the `small` preset: resident, naive, a config, disk roofline.

    .venv/bin/python benchmarks/bench_small.py [--config CFG.toml] [--json]

Synthesizes and packs the small preset under build/bench/ once, then runs `moe-engine bench`
on it with the store's own probe suite (what `moe-engine bench STORE` prints).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streaming_vs_resident import ensure_store

from engine.cli import main as engine_main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "bench"])
    ap.add_argument("--family", default="qwen3_moe")
    ap.add_argument("--config", help="EngineConfig TOML (default: EngineConfig())")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    _, store = ensure_store(args.preset, args.family)
    cmd = ["bench", str(store.root)]
    cmd += ["--config", args.config] if args.config else []
    cmd += ["--json"] if args.json else []
    return engine_main(cmd)


if __name__ == "__main__":
    sys.exit(main())
