"""Probe suites: fixed prompts, decode lengths and a seed, so runs are comparable.

A suite TOML has `[[prompts]]` tables with `ids = [...]` (token ids) or `text = "..."` (needs a
tokenizer) and `decode_tokens`; optional `seed`, `name`, `warmup_tokens`, and a `[generated]`
table (prompts, prompt_tokens, decode_tokens) used when text cannot be encoded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ProbeError
from engine.tomlfile import read_toml

DEFAULT_WARMUP = 4
# Bounds that keep a typo from asking for a run that never ends.
MAX_PROMPTS = 10_000
MAX_TOKENS = 1 << 17


@dataclass(frozen=True)
class Prompt:
    ids: tuple[int, ...]
    decode_tokens: int


@dataclass(frozen=True)
class Suite:
    name: str
    source: str  # file it came from (for messages and provenance)
    prompts: tuple[Prompt, ...]
    seed: int
    warmup_tokens: int

    @property
    def fingerprint(self) -> str:
        """Changes whenever the measured token ids or lengths change (reference cache key)."""
        body = json.dumps([[list(p.ids), p.decode_tokens] for p in self.prompts])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def decode_total(self) -> int:
        return sum(p.decode_tokens for p in self.prompts)


def default_suite_path(store_root: Path | None = None) -> Path:
    """The store's own suite (synth writes one) if it has one, else the shipped default."""
    if store_root is not None:
        own = store_root / "dense" / "probe_suite.toml"
        if own.is_file():
            return own
    return Path(str(resources.files("engine") / "data" / "default_suite.toml"))


def load_suite(path: str | Path, *, vocab_size: int, tokenizer: Any | None = None) -> Suite:
    path = Path(path)
    if vocab_size < 1:
        raise ProbeError(f"{path}: the model's vocab_size {vocab_size} leaves no token ids")
    doc = read_toml(path, "probe suite", ProbeError)
    seed = _int(doc, "seed", path, default=0, minimum=0)  # numpy refuses negative seeds
    warmup = _int(doc, "warmup_tokens", path, default=DEFAULT_WARMUP, minimum=0)
    entries = doc.get("prompts", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ProbeError(f"{path}: `prompts` must be an array of tables ([[prompts]])")
    prompts: list[Prompt] = []
    has_ids = all("ids" in e for e in entries) and entries
    if entries and (has_ids or tokenizer is not None):
        for i, e in enumerate(entries):
            prompts.append(_prompt(e, i, path, vocab_size, tokenizer))
    elif "generated" in doc:
        g = doc["generated"]
        if not isinstance(g, dict):
            raise ProbeError(f"{path}: `generated` must be a table")
        rng = np.random.default_rng(seed)
        n = _int(g, "prompts", path, 4, minimum=1, maximum=MAX_PROMPTS)
        plen = _int(g, "prompt_tokens", path, 48, minimum=1, maximum=MAX_TOKENS)
        dec = _int(g, "decode_tokens", path, 64, minimum=1, maximum=MAX_TOKENS)
        for _ in range(n):
            prompts.append(Prompt(tuple(int(t) for t in rng.integers(0, vocab_size, plen)), dec))
    else:
        raise ProbeError(
            f"{path}: prompts are text but the store has no tokenizer; give `ids` or a "
            "[generated] table"
        )
    if not prompts:
        raise ProbeError(f"{path}: no prompts; add at least one [[prompts]] table")
    name = str(doc.get("name", path.stem))
    return Suite(name, str(path), tuple(prompts), seed, warmup)


def _prompt(e: dict[str, Any], i: int, path: Path, vocab: int, tokenizer: Any | None) -> Prompt:
    where = f"{path}: prompts[{i}]"
    dec = _int(e, "decode_tokens", path, default=32)
    if not 1 <= dec <= MAX_TOKENS:
        raise ProbeError(f"{where}.decode_tokens must be in 1..{MAX_TOKENS}, got {dec}")
    if "ids" in e:
        ids = e["ids"]
        if not isinstance(ids, list) or not ids or not all(_is_int(t) for t in ids):
            raise ProbeError(f"{where}.ids must be a non-empty list of integers")
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ProbeError(f"{where}.ids has {bad[:3]} outside the vocabulary 0..{vocab - 1}")
        return Prompt(tuple(ids), dec)
    if "text" in e:
        if tokenizer is None:
            raise ProbeError(f"{where}: text prompt but the store has no tokenizer; use ids")
        text = e["text"]
        if not isinstance(text, str) or not text.strip():
            raise ProbeError(f"{where}.text must be a non-empty string")
        try:
            ids = [int(t) for t in tokenizer.encode(text)]
        except Exception as err:  # the tokenizer library's own error types
            raise ProbeError(f"{where}.text: the tokenizer cannot encode it ({err})") from None
        if not ids or not all(0 <= t < vocab for t in ids):
            raise ProbeError(f"{where}.text encodes to no tokens or ids outside the vocabulary")
        return Prompt(tuple(ids), dec)
    raise ProbeError(f"{where}: needs `ids` or `text`")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(
    doc: dict[str, Any],
    key: str,
    path: Path,
    default: int,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    v = doc.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProbeError(f"{path}: `{key}` must be an integer, got {v!r}")
    if minimum is not None and v < minimum:
        raise ProbeError(f"{path}: `{key}` must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ProbeError(f"{path}: `{key}` must be <= {maximum}, got {v}")
    return v
