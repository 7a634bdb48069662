"""`moe-engine` / `python -m engine`: a thin CLI over the engine library.

Each subcommand's help is the docstring of its handler; handlers only parse, call the library
and print. Errors the engine raises on purpose print one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.util import Handler, add_command, dispatch
from engine.errors import EngineError


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic MoE checkpoint (random weights, planted routing structure).

    Weights are random, routing is not: popularity skew, topic persistence across consecutive
    tokens and cross-layer predictability are planted so caches and prefetch behave as in real
    models. Toy presets (need --family): tiny (tests, a few MB), small (demo, ~400 MB), bench
    (GBs, I/O-bound). Real-shape presets carry a published model's per-layer shapes and routing
    calibrated to its published cache figures: qwen3-30b-a3b, olmoe-1b-7b, mixtral-8x7b,
    kimi-k2, qwen3.5-397b-a17b (mlx-community layout); use --layers to fit a disk.
    --quantize 4|8 writes mlx-community's quantized layout (as `mlx_lm convert -q` would),
    layer by layer in bounded RAM.
    Any family `families` lists as streaming can be built at tiny size (mlx-community layout, or
    HF layout where its HF key names are known).
    """
    from engine.synth.tiny import synthesize_family

    out = synthesize_family(
        Path(args.out),
        family=args.family,
        preset=args.preset,
        seed=args.seed,
        force=args.force,
        layout=args.layout,
        layers=args.layers,
        quantize=args.quantize,
        group_size=args.group_size,
        progress=None if args.progress is None else args.progress == "on",
    )
    print(f"wrote {out}")
    return 0


def cmd_families(args: argparse.Namespace) -> int:
    """List every mlx-lm model type with a stacked-expert layer and whether it streams.

    One line each: `streams (tested)` when the parity suite checks it against mlx-lm's own
    float32 model, else why not yet. Read from the installed mlx-lm's model files.
    """
    from engine.cli.families import render

    print(render())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    """Pack an HF or mlx-community checkpoint into a streaming expert store.

    Non-expert weights are copied once; each MoE layer's experts go to one file, every expert
    contiguous and 4096-aligned, with a manifest of offsets and checksums. Packing streams tensor
    by tensor (bounded RAM) into a temp dir that is renamed into place at the end.
    """
    from engine.pack import pack

    store = pack(
        Path(args.model),
        Path(args.store),
        bits=args.bits,
        group_size=args.group_size,
        layout=args.layout,
        force=args.force,
    )
    print(
        f"packed {store.root}: {len(store.layers)} MoE layers x {store.num_experts} experts, "
        f"{store.bits}-bit, layout {store.layout}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check a store's manifest and every expert checksum; exit non-zero naming what is bad."""
    from engine.verify import verify

    report = verify(Path(args.store))
    print(report.summary())
    return 0 if report.ok else 1


def cmd_run(args: argparse.Namespace) -> int:
    """Generate greedily from a packed store, streaming experts under the config's budget.

    The store is evicted from the OS page cache at start, so the reported memory (peak RSS +
    the store's pages in the page cache) counts only what this run brought in, never pages left
    by an earlier run; each run therefore starts cold.
    """
    from engine.cli.run import run_command

    return run_command(args)


def cmd_probe(args: argparse.Namespace) -> int:
    """Measure one config on a fixed probe suite: speed, latency, I/O, memory and quality.

    Prints every metric (docs/architecture.md; one JSON object with --json). Cold runs evict
    the store from the OS page cache first; warm runs do one unmeasured pass first. Quality
    (kl_mean, top1_agreement) is teacher-forced against a cached full-precision reference run.
    """
    from engine.cli.probe import probe_command

    return probe_command(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """Side by side: mlx-lm resident, naive streaming, the given config, disk roofline."""
    from engine.cli.bench import bench_command

    return bench_command(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moe-engine", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler) -> argparse.ArgumentParser:
        return add_command(sub, name, fn)

    from engine.contract import SYNTH_FAMILIES, SYNTH_PRESETS
    from engine.synth.hf import QUANT_BITS

    sp = add("synth", cmd_synth)
    sp.add_argument("out", help="output checkpoint directory")
    sp.add_argument(
        "--family", choices=list(SYNTH_FAMILIES), help="architecture (toy presets; required)"
    )
    sp.add_argument("--preset", default="tiny", choices=list(SYNTH_PRESETS))
    sp.add_argument(
        "--layers",
        type=int,
        help="keep this many layers (default: all; qwen3.5-397b-a17b: >= 4, one full-attention "
        "layer per 4)",
    )
    sp.add_argument(
        "--quantize", type=int, choices=list(QUANT_BITS), help="write mlx-community's N-bit layout"
    )
    sp.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128])
    sp.add_argument("--progress", choices=["on", "off"], help="default: on above 1 GiB")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--force", action="store_true", help="replace OUT if it exists")
    sp.add_argument(
        "--layout",
        choices=["hf", "mlx"],
        help="hf: per-expert/fused HF tensors; mlx: stacked (mlx-community). Default: hf for "
        "qwen3_moe, mixtral, deepseek_v3, qwen2_moe, olmoe; mlx for the others",
    )

    add("families", cmd_families)

    sp = add("pack", cmd_pack)
    sp.add_argument("model", help="HF or mlx-community checkpoint directory")
    sp.add_argument("store", help="output store directory")
    sp.add_argument("--bits", type=int, default=16, choices=[16, 8, 4, 3, 2])
    sp.add_argument("--group-size", type=int, default=64, choices=[32, 64, 128])
    sp.add_argument("--layout", default="natural", choices=["natural", "coactivation"])
    sp.add_argument("--force", action="store_true", help="replace STORE if it exists")

    sp = add("verify", cmd_verify)
    sp.add_argument("store", help="store directory")

    sp = add("run", cmd_run)
    sp.add_argument("store", help="store directory")
    sp.add_argument("--config", help="EngineConfig TOML (e.g. an exported tuned.toml)")
    g = sp.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text (needs a tokenizer in the store)")
    g.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    sp.add_argument("--max-tokens", type=int, default=32)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument(
        "--force", action="store_true", help="run a tuned config on a store it was not tuned for"
    )

    sp = add("probe", cmd_probe)
    sp.add_argument("store", help="store directory")
    sp.add_argument("--suite", help="probe suite TOML (default: the store's own, else shipped)")
    sp.add_argument("--config", help="EngineConfig TOML")
    temp = sp.add_mutually_exclusive_group()
    temp.add_argument(
        "--cold",
        dest="cold",
        action="store_true",
        default=True,
        help="evict the store from the OS page cache before each repeat (default)",
    )
    temp.add_argument(
        "--warm",
        dest="cold",
        action="store_false",
        help="one unmeasured pass first, page cache left warm",
    )
    sp.add_argument("--repeats", type=int, default=1, help="fresh engine per repeat")
    sp.add_argument(
        "--reference",
        help="model dir or 16-bit store for quality "
        "(default: the store's source checkpoint, else the store if 16-bit)",
    )
    sp.add_argument("--no-quality", action="store_true", help="skip kl_mean/top1_agreement")
    sp.add_argument("--trace", help="write the routing trace (.npz) of the first repeat here")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp.add_argument(
        "--force", action="store_true", help="probe a tuned config on a store it was not tuned for"
    )

    sp = add("bench", cmd_bench)
    sp.add_argument("store", help="store directory")
    sp.add_argument("--config", help="EngineConfig TOML")
    sp.add_argument("--suite", help="probe suite TOML")
    sp.add_argument(
        "--source",
        help="source checkpoint for the naive baseline (default: the one recorded in the store)",
    )
    sp.add_argument("--json", action="store_true", help="print one JSON object")

    return p


def main(argv: list[str] | None = None) -> int:
    return dispatch(_parser().parse_args(argv), (EngineError,))


if __name__ == "__main__":
    sys.exit(main())
