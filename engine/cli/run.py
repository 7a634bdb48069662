"""`moe-engine run`: greedy generation from a store, printing tokens and a one-line summary.

The store is evicted from the OS page cache at start, so the memory figure (RSS + the store's
resident pages) is what this run needed, not pages an earlier run left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from engine import tokenizer as tokfiles
from engine.config import EngineConfig, load_provenance
from engine.errors import ConfigError, StoreCorrupt
from engine.families import text_config
from engine.generate import Generation
from engine.measure.metrics import Phase, timing
from engine.measure.probe import store_files
from engine.pagecache import evict_all
from engine.procstats import peak_rss
from engine.runtime import Engine
from engine.shapes import open_for_run
from engine.store import Store
from engine.suite import DEFAULT_WARMUP


def has_tokenizer(store: Store) -> bool:
    return tokfiles.has_tokenizer(store.dense_dir)


def load_tokenizer(store: Store) -> Any:
    """The store's tokenizer; a corrupt or unreadable one is a StoreCorrupt, not a traceback."""
    fix = f"run `moe-engine verify {store.root}` or re-pack the store"
    return tokfiles.load_tokenizer(store.dense_dir, StoreCorrupt, fix)


def encode_prompt(tokenizer: Any, text: str, what: str = "--prompt") -> list[int]:
    """Text -> token ids; empty results and text that is not UTF-8 are refused."""
    try:
        text.encode("utf-8")  # argv bytes that are not UTF-8 arrive as lone surrogates
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid UTF-8 text") from None
    try:
        ids = list(tokenizer.encode(text))
    except Exception as e:  # the tokenizer library's own error types
        raise ConfigError(f"{what}: the tokenizer cannot encode it ({e})") from None
    if not ids:
        raise ConfigError(f"{what} encodes to no tokens; give some text")
    return ids


def max_new_tokens(store: Store, prompt_len: int, requested: int) -> int:
    """--max-tokens must be >= 1 and fit the model's context (no run that cannot finish)."""
    ctx = store.config.get("max_position_embeddings")
    limit = ctx if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else 1 << 17
    if requested < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {requested}")
    if prompt_len + requested > limit:
        raise ConfigError(
            f"--max-tokens {requested} plus the {prompt_len}-token prompt exceeds the model's "
            f"context of {limit} tokens; ask for at most {max(limit - prompt_len, 0)}"
        )
    return requested


def load_config(path: str | None, store: Store, *, force: bool) -> EngineConfig:
    """Read --config; a tuned file made for another store warns, or refuses without --force."""
    if path is None:
        return EngineConfig()
    config = EngineConfig.from_toml(path)
    prov = load_provenance(path).get("provenance", {})
    tuned_for = prov.get("store_fingerprint")
    if tuned_for and tuned_for != store.fingerprint:
        where = prov.get("store") or "another store"
        msg = (
            f"{path} was tuned on store {where} (fingerprint {str(tuned_for)[:12]}) but "
            f"{store.root} is {store.fingerprint[:12]}; run it on {where}, or its figures may "
            "not hold here"
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
        prompt = encode_prompt(tokenizer, args.prompt)
    else:
        prompt = parse_ids(args.prompt_ids)
    vocab = int(text_config(store.config)["vocab_size"])
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise ConfigError(f"prompt token ids {bad[:3]} are outside the vocabulary 0..{vocab - 1}")
    max_new_tokens(store, len(prompt), args.max_tokens)
    # Pages an earlier run left cached would count as this run's memory (and hide its reads).
    evict_all(store_files(store))
    with Engine(store, config) as engine:
        eos = None
        if tokenizer is not None and getattr(tokenizer, "eos_token_ids", None):
            eos = set(tokenizer.eos_token_ids)
        t0 = time.perf_counter()
        c0, mark = engine.counters(), {}
        gen = engine.generate(
            prompt,
            args.max_tokens,
            eos=eos,
            on_token=lambda _t: mark.setdefault("c1", engine.counters()),
        )
        decode = Phase()
        decode.add(mark["c1"], engine.counters())
        summary = run_summary(engine, gen, time.perf_counter() - t0, c0, decode)
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
        f"{summary['tokens_generated']} tokens | decode {_tok_s(summary['decode_tok_s'])} | "
        f"ttft {summary['ttft_s'] * 1000:.0f} ms | hit rate {summary['cache_hit_rate']:.1%} | "
        f"read {summary['bytes_read'] / 2**20:.1f} MiB "
        f"({summary['bytes_read_per_token'] / 2**20:.2f} MiB/token) | "
        f"peak memory {summary['memory_bytes'] / 2**20:.0f} MiB "
        f"(RSS {summary['peak_rss_bytes'] / 2**20:.0f} + page cache "
        f"{summary['page_cache_bytes'] / 2**20:.0f})"
    )
    return 0


def _tok_s(v: float | None) -> str:
    return f"{v:.1f} tok/s" if v is not None else f"- tok/s (<= {DEFAULT_WARMUP} decode steps)"


def run_summary(
    engine: Engine, gen: Generation, wall_s: float, start: dict[str, Any], decode: Phase
) -> dict[str, Any]:
    """The figures of `engine run` (speed, hit rate, bytes read, peak memory), as
    engine.measure.metrics defines them; `start`: engine.counters() before the run."""
    c = engine.counters()
    n = len(gen.tokens)
    t = timing([gen], DEFAULT_WARMUP)
    page = engine.page_cache_bytes()
    read = c["bytes_read"] - start["bytes_read"]
    return {
        "tokens_generated": n,
        "ttft_s": t["ttft_s"],
        "decode_tok_s": t["decode_tok_s"],
        "decode_tokens_measured": t["decode_tokens_measured"],
        "wall_s": wall_s,
        "cache_hit_rate": decode.cache_hit_rate,
        "bytes_read": read,
        "bytes_read_per_token": read / n if n else 0.0,
        "peak_rss_bytes": peak_rss(),
        "page_cache_bytes": page,
        "memory_bytes": peak_rss() + page,
        "cache_bytes": engine.cache_bytes,
        "io_mode": engine.config.io_mode,
        "time": time.time(),
    }
