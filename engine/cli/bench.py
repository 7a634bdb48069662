"""`moe-engine bench`: baselines side by side in one run, on the same prompts, with ratios.

Rows: mlx-lm resident (the whole source model in RAM, when it fits), naive streaming (experts
read from the source checkpoint per token, no cache, no prefetch), the given config; plus a raw
disk read at the config's read size and parallelism -> the I/O roofline and the config's
efficiency against it. Every row starts cold (its files evicted from the OS page cache).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx

from engine.config import EngineConfig
from engine.errors import CheckpointError, EngineError
from engine.families import text_config
from engine.generate import Generation
from engine.measure.machine import fingerprint
from engine.measure.metrics import Phase, timing
from engine.pagecache import evict_all
from engine.shapes import open_for_run
from engine.store import Store
from engine.suite import Suite, default_suite_path, load_suite

ROOFLINE_MIN_FILE = 16 << 20  # a smaller layer file is measured through a temp file instead
ROOFLINE_BYTES = 64 << 20
GB = 1e9

Runner = Callable[[list[int], int], Generation]


def bench_command(args: argparse.Namespace) -> int:
    """Handler of `moe-engine bench` (see engine.cli for the options)."""
    result = bench(
        Path(args.store),
        config=EngineConfig.from_toml(args.config) if args.config else None,
        suite_path=Path(args.suite) if args.suite else None,
        source=Path(args.source) if args.source else None,
    )
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_table(result)
    return 0


def bench(
    store_path: Path,
    config: EngineConfig | None = None,
    suite_path: Path | None = None,
    source: Path | None = None,
) -> dict[str, Any]:
    """One bench run -> {"rows", "ratios", "roofline", "machine", "suite", "config"}."""
    from engine.measure.naive import source_path

    if source is not None and not (source / "config.json").is_file():
        # Asked for by name: skipping its rows silently would hide the typo.
        raise CheckpointError(f"--source {source}: not a checkpoint directory (no config.json)")
    store = open_for_run(store_path)
    config = config or EngineConfig()
    suite = _suite(store, suite_path)
    src = source or source_path(store)
    rows = [
        _resident_row(src, suite),
        _naive_row(store, src, suite),
        _config_row(store, config, suite),
    ]
    roofline = _roofline(store, config, rows[2])
    return {
        "rows": rows,
        "ratios": _ratios(rows),
        "roofline": roofline,
        "machine": fingerprint(store.root),
        "suite": {"name": suite.name, "prompts": len(suite.prompts), "source": suite.source},
        "config": config.to_dict(),
        "store": str(store.root),
        "source": str(src) if src is not None else None,
    }


def _suite(store: Store, path: Path | None) -> Suite:
    from engine.cli.run import has_tokenizer, load_tokenizer

    vocab = int(text_config(store.config).get("vocab_size", 0))
    tok = load_tokenizer(store) if has_tokenizer(store) else None
    return load_suite(path or default_suite_path(store.root), vocab_size=vocab, tokenizer=tok)


# ---- running the suite ---------------------------------------------------------------------


def _run_suite(run: Runner, suite: Suite) -> dict[str, Any]:
    """Every prompt once; figures as engine.measure.metrics defines them (decode sustained,
    None when no step is left past the warm-up)."""
    t0 = time.perf_counter()
    gens = [run(list(p.ids), p.decode_tokens) for p in suite.prompts]
    t = timing(gens, suite.warmup_tokens)
    keep = ("ttft_s", "decode_tok_s", "decode_tokens_measured", "tokens", "prefill_tokens")
    return {"wall_s": time.perf_counter() - t0, **{k: t[k] for k in keep}}


def _start_memory() -> None:
    gc.collect()
    mx.clear_cache()
    mx.reset_peak_memory()


def _row(name: str, status: str = "ok", reason: str | None = None, **m: Any) -> dict[str, Any]:
    return {"name": name, "status": status, "reason": reason, **m}


def _resident_row(src: Path | None, suite: Suite) -> dict[str, Any]:
    from engine.model import fits_in_memory, load_reference

    name = "mlx-lm resident"
    if src is None or not (src / "config.json").is_file():
        return _row(name, "skipped", _missing_source(src))
    why = fits_in_memory(src)
    if why is not None:
        return _row(name, "skipped", why)
    evict_all(src.glob("*.safetensors"))
    _start_memory()
    t0 = time.perf_counter()
    try:
        model = load_reference(src)
    except (EngineError, ValueError, OSError) as e:
        return _row(name, "skipped", f"cannot load {src}: {e}")
    load_s = time.perf_counter() - t0
    from engine.generate import generate

    m = _run_suite(lambda ids, n: generate(model, ids, n), suite)
    return _row(
        name,
        load_s=load_s,
        bytes_read_per_token=0.0,
        cache_hit_rate=1.0,
        peak_mlx_bytes=mx.get_peak_memory(),
        **m,
    )


def _naive_row(store: Store, src: Path | None, suite: Suite) -> dict[str, Any]:
    from engine.measure.naive import NaiveStreaming

    name = "naive streaming"
    if src is None or not src.is_dir():
        return _row(name, "skipped", _missing_source(src))
    _start_memory()
    t0 = time.perf_counter()
    try:
        naive = NaiveStreaming(store, src)
    except EngineError as e:
        return _row(name, "skipped", str(e))
    load_s = time.perf_counter() - t0
    naive.evict()
    m = _run_suite(lambda ids, n: naive.generate(ids, n), suite)
    c = naive.counters()
    return _row(
        name,
        load_s=load_s,
        bytes_read=c["bytes_read"],
        bytes_read_per_token=c["bytes_read"] / m["tokens"],
        read_s=c["read_s"],
        cache_hit_rate=0.0,
        peak_mlx_bytes=mx.get_peak_memory(),
        **m,
    )


def _config_row(store: Store, config: EngineConfig, suite: Suite) -> dict[str, Any]:
    from engine.runtime import Engine

    _start_memory()
    t0 = time.perf_counter()
    with Engine(store, config) as engine:
        load_s = time.perf_counter() - t0
        evict_all(engine.files)  # cold: expert bytes come from the disk
        before = engine.counters()
        prefill, decode = Phase(), Phase()

        def run(ids: list[int], n: int) -> Generation:
            c0, mark = engine.counters(), {}

            def first(_tok: int) -> None:
                mark.setdefault("c1", engine.counters())  # prefill ends with the first token

            gen = engine.generate(ids, n, on_token=first)
            prefill.add(c0, mark["c1"])
            decode.add(mark["c1"], engine.counters())
            return gen

        m = _run_suite(run, suite)
        c = engine.counters()
        d = {k: c[k] - before[k] for k in ("bytes_read", "stall_s")}
        page = engine.page_cache_bytes()
        peak = mx.get_peak_memory()
    return _row(
        "config",
        load_s=load_s,
        bytes_read=d["bytes_read"],
        bytes_read_per_token=d["bytes_read"] / m["tokens"],
        stall_s=d["stall_s"],
        cache_hit_rate=decode.cache_hit_rate,
        peak_mlx_bytes=peak,
        page_cache_bytes=page,
        **m,
    )


def _missing_source(src: Path | None) -> str:
    if src is None:
        return "no source checkpoint recorded in the store; pass --source DIR"
    return f"source checkpoint {src} is gone; pass --source DIR to compare against it"


def _ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    by = {r["name"]: r for r in rows}
    cfg = by["config"]

    def ratio(num: dict[str, Any], den: dict[str, Any], key: str) -> float | None:
        if num["status"] != "ok" or den["status"] != "ok" or not den.get(key):
            return None
        return num[key] / den[key]

    res, naive = by["mlx-lm resident"], by["naive streaming"]
    # All ratios are speedups of the config: > 1 means the config is faster.
    return {
        "decode_config_over_resident": ratio(cfg, res, "decode_tok_s"),
        "decode_config_over_naive": ratio(cfg, naive, "decode_tok_s"),
        "ttft_speedup_over_resident": ratio(res, cfg, "ttft_s"),
        "ttft_speedup_over_naive": ratio(naive, cfg, "ttft_s"),
    }


# ---- I/O roofline --------------------------------------------------------------------------


def _roofline(store: Store, config: EngineConfig, cfg_row: dict[str, Any]) -> dict[str, Any]:
    """Raw cold random reads at the config's read size and parallelism vs what the config got."""
    from engine.measure.diskbench import make_test_file, measure_read_bandwidth

    chunk = min(config.read_chunk_bytes, store.expert_span)
    threads = config.io_threads
    files = [store.root / le.file for le in store.layers]
    big = max(files, key=lambda f: f.stat().st_size)
    out: dict[str, Any] = {
        "io_mode": config.io_mode,
        "read_bytes": chunk,
        "io_threads": threads,
        "pattern": "random",
    }
    try:
        if big.stat().st_size >= ROOFLINE_MIN_FILE:
            out["file"] = str(big)
            gb_s = measure_read_bandwidth(
                big, chunk, threads, config.io_mode, ROOFLINE_BYTES, pattern="random"
            )
        else:
            # Too small to leave the drive's cache; a temp file on the store's disk stands in.
            # Next to the store (same disk), never inside it: the store stays untouched.
            with tempfile.TemporaryDirectory(prefix=".bench-", dir=store.root.parent) as d:
                f = make_test_file(Path(d) / "roofline.bin", ROOFLINE_BYTES)
                out["file"] = f"temp file in {store.root.parent}"
                gb_s = measure_read_bandwidth(
                    f, chunk, threads, config.io_mode, ROOFLINE_BYTES, pattern="random"
                )
    except (EngineError, OSError, ValueError) as e:
        out.update(raw_gb_s=None, achieved_gb_s=None, efficiency=None, reason=str(e))
        return out
    # Achieved: bytes the config read / time the model spent in expert fetches (reads, decode
    # and cache lookups: the provider times no finer), so a high hit rate lowers it; with
    # prefetch, reads also overlap compute, which raises it.
    stall = cfg_row.get("stall_s") or 0.0
    achieved = cfg_row["bytes_read"] / stall / GB if stall > 0 and cfg_row["bytes_read"] else None
    out.update(
        raw_gb_s=gb_s,
        achieved_gb_s=achieved,
        efficiency=achieved / gb_s if achieved is not None and gb_s > 0 else None,
        achieved_is="bytes read / expert fetch time (reads + decode + cache lookups)",
        cold=True,
    )
    return out


# ---- output --------------------------------------------------------------------------------


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit == "B":
        for scale, s in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.2f} {s}"
        return f"{v:.0f} B"
    if unit == "%":
        return f"{100 * v:.1f}%"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(expand=False, title=f"bench {result['store']} ({result['suite']['name']} suite)")
    cols = [
        ("row", None),
        ("decode tok/s", ""),
        ("ttft s", ""),
        ("bytes/token", "B"),
        ("hit rate", "%"),
        ("peak MLX mem", "B"),
        ("load s", ""),
    ]
    keys = [
        None,
        "decode_tok_s",
        "ttft_s",
        "bytes_read_per_token",
        "cache_hit_rate",
        "peak_mlx_bytes",
        "load_s",
    ]
    for c, _ in cols:
        t.add_column(c, justify="left" if c == "row" else "right")
    for r in result["rows"]:
        if r["status"] != "ok":
            t.add_row(r["name"], f"skipped: {r['reason']}", *[""] * (len(cols) - 2))
            continue
        t.add_row(
            r["name"],
            *(_fmt(r.get(k), u or "") for k, (_, u) in zip(keys[1:], cols[1:], strict=True)),
        )
    console = Console(width=max(Console().width, 110))  # pipes default to 80: too narrow
    console.print(t)
    ro = result["roofline"]
    for k, v in result["ratios"].items():
        console.print(f"{k}: {_fmt(v)}")
    console.print(
        f"roofline: raw {ro['io_mode']} {_fmt(ro['read_bytes'], 'B')} x{ro['io_threads']} "
        f"threads = {_fmt(ro.get('raw_gb_s'))} GB/s; config achieved "
        f"{_fmt(ro.get('achieved_gb_s'))} GB/s; efficiency {_fmt(ro.get('efficiency'), '%')}"
    )
    m = result["machine"]
    console.print(
        f"machine: {m['cpu_model']} x{m['cpu_count']}, {_fmt(m['ram_bytes'], 'B')} RAM, "
        f"disk {m['disk_device']} {_fmt(m['disk_read_gb_s'])} GB/s, id {m['id']}"
    )
