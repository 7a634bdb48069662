"""`moe-engine run`: greedy generation from a store, printing tokens and a one-line summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import EngineConfig, load_provenance
from engine.errors import ConfigError
from engine.runtime import Engine, run_summary
from engine.shapes import open_for_run
from engine.store import Store

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def has_tokenizer(store: Store) -> bool:
    return any((store.dense_dir / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(store: Store) -> Any:
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    return mlx_load_tokenizer(store.dense_dir)


def load_config(path: str | None, store: Store, *, force: bool) -> EngineConfig:
    """Read --config; a tuned file made for another store warns, or refuses without --force."""
    if path is None:
        return EngineConfig()
    config = EngineConfig.from_toml(path)
    tuned_for = load_provenance(path).get("provenance", {}).get("store_fingerprint")
    if tuned_for and tuned_for != store.fingerprint:
        msg = (
            f"{path} was tuned on store {tuned_for[:12]} but {store.root} is "
            f"{store.fingerprint[:12]}; its figures may not hold here"
        )
        if not force:
            raise ConfigError(msg + " (pass --force to run it anyway)")
        print(f"warning: {msg}", file=sys.stderr)
    return config


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ConfigError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise ConfigError("--prompt-ids is empty")
    return ids


def run_command(args: argparse.Namespace) -> int:
    store = open_for_run(Path(args.store))
    config = load_config(args.config, store, force=args.force)
    tokenizer = None
    if args.prompt is not None:
        if not has_tokenizer(store):
            raise ConfigError(
                f"{store.dense_dir} has no tokenizer, so --prompt TEXT cannot be encoded; "
                "use --prompt-ids 1,2,3"
            )
        tokenizer = load_tokenizer(store)
        prompt = tokenizer.encode(args.prompt)
    else:
        prompt = parse_ids(args.prompt_ids)
    if args.max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    with Engine(store, config) as engine:
        eos = None
        if tokenizer is not None and getattr(tokenizer, "eos_token_ids", None):
            eos = set(tokenizer.eos_token_ids)
        t0 = time.perf_counter()
        gen = engine.generate(prompt, args.max_tokens, eos=eos)
        summary = run_summary(engine, gen, time.perf_counter() - t0)
    text = tokenizer.decode(gen.tokens) if tokenizer is not None else None
    if args.json:
        out = {"tokens": gen.tokens, "prompt_tokens": len(prompt), **summary}
        if text is not None:
            out["text"] = text
        out["config"] = config.to_dict()
        print(json.dumps(out))
        return 0
    print(text if text is not None else " ".join(str(t) for t in gen.tokens))
    print(
        f"{summary['tokens_generated']} tokens | decode {summary['decode_tok_s']:.1f} tok/s | "
        f"ttft {summary['ttft_s'] * 1000:.0f} ms | hit rate {summary['cache_hit_rate']:.1%} | "
        f"read {summary['bytes_read'] / 2**20:.1f} MiB "
        f"({summary['bytes_read_per_token'] / 2**20:.2f} MiB/token) | "
        f"peak memory {summary['memory_bytes'] / 2**20:.0f} MiB "
        f"(RSS {summary['peak_rss_bytes'] / 2**20:.0f} + page cache "
        f"{summary['page_cache_bytes'] / 2**20:.0f})"
    )
    return 0
