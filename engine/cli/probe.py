"""`moe-engine probe`: print the metrics JSON (or a readable summary) for one config."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.cli.run import has_tokenizer, load_config, load_tokenizer
from engine.errors import ProbeError
from engine.families import text_config
from engine.measure.machine import fingerprint
from engine.measure.probe import METRICS, probe
from engine.measure.reference import get_reference
from engine.shapes import open_for_run
from engine.suite import default_suite_path, load_suite


def probe_command(args: argparse.Namespace) -> int:
    store = open_for_run(Path(args.store))
    config = load_config(args.config, store, force=args.force)
    if args.repeats < 1:
        raise ProbeError(f"--repeats must be >= 1, got {args.repeats}")
    if args.trace:
        # Checked before the run, not after it: a long probe must not be lost to a typo.
        folder = Path(args.trace).parent
        if not folder.is_dir():
            raise ProbeError(f"--trace {args.trace}: folder {folder} does not exist; create it")
        if Path(args.trace).is_dir():
            raise ProbeError(f"--trace {args.trace}: is a directory; give a file name (.npz)")
    tokenizer = load_tokenizer(store) if has_tokenizer(store) else None
    suite_path = Path(args.suite) if args.suite else default_suite_path(store.root)
    vocab = int(text_config(store.config)["vocab_size"])  # nested in vision-language configs
    suite = load_suite(suite_path, vocab_size=vocab, tokenizer=tokenizer)
    reference = None if args.no_quality else get_reference(store, suite, args.reference)
    out = probe(
        store,
        config,
        suite,
        cold=args.cold,
        repeats=args.repeats,
        reference=reference,
        trace_path=args.trace,
    )
    out["machine"] = fingerprint(store.root)
    if args.json:
        print(json.dumps(out))
    else:
        _print_summary(out)
    return 0


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "n/a"
    if key.endswith("_bytes") or key == "bytes_read_per_token":
        return f"{v / 2**20:.2f} MiB"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _print_summary(out: dict[str, Any]) -> None:
    for key in METRICS:
        spread = out.get("spread", {}).get(key)
        extra = f" (± {_fmt(key, spread)})" if spread else ""
        print(f"{key}: {_fmt(key, out.get(key))}{extra}")
    by_len = out.get("ttft_by_prompt_tokens") or {}
    if by_len:  # TTFT grows with the prompt: say it per length
        print("ttft_by_prompt_tokens: " + ", ".join(f"{n}: {v:.4g}" for n, v in by_len.items()))
    for key in (
        "tokens",
        "decode_tokens_measured",
        "warmup_tokens_excluded",
        "cold",
        "repeats",
        "reference",
    ):
        print(f"{key}: {out.get(key)}")
    sys.stdout.flush()
