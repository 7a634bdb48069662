"""`make demo`: synthesize the `small` model, pack it, verify it, stream it under two configs.

Everything lands in one working directory and is reused on a second run, so the demo is cheap
to repeat; each step prints what it did and where.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from engine.config import EngineConfig, MiB
from engine.runtime import Engine, reset_peak_rss, run_summary
from engine.store import Store

console = Console()


def _step(title: str) -> None:
    console.rule(f"[bold]{title}")


def demo(out: Path, preset: str = "small", family: str = "qwen3_moe") -> int:
    from engine.pack import pack
    from engine.synth import synthesize
    from engine.verify import verify

    out.mkdir(parents=True, exist_ok=True)
    ckpt, store_dir = out / f"{family}-{preset}", out / f"{family}-{preset}-store-b4"
    _step(f"1. synthesize a {preset} {family} checkpoint")
    if (ckpt / "config.json").is_file():
        console.print(f"reusing {ckpt}")
    else:
        synthesize(ckpt, family=family, preset=preset, seed=0)
        console.print(f"wrote {ckpt}")
    _step("2. pack it into a 4-bit expert store")
    if (store_dir / "manifest.json").is_file():
        console.print(f"reusing {store_dir}")
    else:
        pack(ckpt, store_dir, bits=4, group_size=64)
    store = Store.open(store_dir)
    console.print(
        f"{store_dir}: {len(store.layers)} MoE layers x {store.num_experts} experts, "
        f"{store.expert_nbytes / 1024:.0f} KiB per expert"
    )
    _step("3. verify every checksum")
    report = verify(store_dir)
    console.print(report.summary())
    if not report.ok:
        return 1
    _step("4. stream it: a cache holding 25% of experts vs no cache")
    prompt = _demo_prompt(store)
    with Engine(store, EngineConfig(cache_bytes=0)) as engine:
        quarter = engine.entry_bytes * len(store.layers) * store.num_experts // 4
    configs = {
        "cache 25%": EngineConfig(cache_bytes=quarter),
        "no cache": EngineConfig(cache_bytes=0),
        "cache 25% + next_layer prefetch": EngineConfig(cache_bytes=quarter, prefetch="next_layer"),
    }
    table = Table(title=f"{len(prompt)}-token prompt, 48 tokens generated")
    for col in ("config", "decode tok/s", "hit rate", "MiB read/token", "peak memory MiB"):
        table.add_column(col)
    for name, cfg in configs.items():
        reset_peak_rss()
        with Engine(store, cfg) as engine:
            t0 = time.perf_counter()
            gen = engine.generate(prompt, 48)
            s = run_summary(engine, gen, time.perf_counter() - t0)
        table.add_row(
            name,
            f"{s['decode_tok_s']:.1f}",
            f"{s['cache_hit_rate']:.1%}",
            f"{s['bytes_read_per_token'] / MiB:.2f}",
            f"{s['memory_bytes'] / MiB:.0f}",
        )
    console.print(table)
    console.print(f"store: {store_dir}\ntry: python -m engine run {store_dir} --prompt-ids 1,2,3")
    return 0


def _demo_prompt(store: Store) -> list[int]:
    import tomllib

    suite = store.root / "dense" / "probe_suite.toml"
    if suite.is_file():
        prompts = tomllib.loads(suite.read_text()).get("prompts", [])
        if prompts:
            return list(prompts[0]["ids"])
    return list(range(1, 33))
