"""The quality reference: what the full-precision model says on a suite, recorded once, cached.

Quality of a config is teacher-forced against it: the config's model reads the prompt plus the
reference's greedy tokens, and its next-token distributions are compared position by position
(`kl_mean` = mean KL(reference || config), `top1_agreement` = share of equal argmax).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn
import numpy as np

from engine.config import EngineConfig
from engine.errors import ProbeError
from engine.generate import generate, score
from engine.model import fits_in_memory, load_reference
from engine.store import MANIFEST, Store
from engine.suite import Suite

CACHE_DIR = "reference"


@dataclass
class Reference:
    kind: str  # "mlx-lm" (source checkpoint in memory) or "engine-16bit" (same math, streamed)
    source: str
    tokens: list[list[int]]  # per prompt: the reference's greedy tokens
    logprobs: list[np.ndarray]  # per prompt: (decode_tokens, V) log-softmax predicting them


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def teacher_forced(model: nn.Module, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """(len(tokens), V) log-probs for each of `tokens`, given the prompt and the tokens before."""
    logits = score(model, [*prompt, *tokens[:-1]])
    return _log_softmax(logits[len(prompt) - 1 :])


def compare(ref: Reference, model: nn.Module, suite: Suite) -> dict[str, float]:
    """kl_mean and top1_agreement of `model` against the reference on the suite."""
    kls, agree, n = [], 0, 0
    for p, toks, ref_lp in zip(suite.prompts, ref.tokens, ref.logprobs, strict=True):
        lp = teacher_forced(model, list(p.ids), toks)
        ref_p = np.exp(ref_lp)
        kls.append((ref_p * (ref_lp - lp)).sum(axis=-1))  # (m,)
        agree += int((lp.argmax(-1) == ref_lp.argmax(-1)).sum())
        n += len(toks)
    kl = np.concatenate(kls)
    return {"kl_mean": float(max(kl.mean(), 0.0)), "top1_agreement": agree / n if n else 0.0}


def choose_reference(store: Store, explicit: str | None) -> tuple[str, Path]:
    """(kind, path): an explicit model dir / 16-bit store, else the source, else this store."""
    if explicit is not None:
        p = Path(explicit)
        if (p / MANIFEST).is_file():
            ref_store = Store.open(p)
            if ref_store.bits != 16:
                raise ProbeError(f"{p}: a reference store must be 16-bit, not {ref_store.bits}-bit")
            return "engine-16bit", p
        if (p / "config.json").is_file():
            return "mlx-lm", p
        raise ProbeError(f"{p}: --reference must be a checkpoint dir or a 16-bit store")
    src = Path(store.manifest.get("source", {}).get("path", ""))
    fits = src.is_dir() and fits_in_memory(src) is None
    if fits and (src / "config.json").is_file():
        return "mlx-lm", src
    if store.bits == 16:
        return "engine-16bit", store.root
    raise ProbeError(
        f"{store.root}: no quality reference: the source checkpoint {src} is gone or too large "
        "for RAM and this store is quantized; pass --reference with a 16-bit store, or "
        "--no-quality"
    )


def _key(kind: str, path: Path, suite: Suite) -> str:
    if kind == "mlx-lm":
        ident = hashlib.sha256(
            (path / "config.json").read_bytes()
            + json.dumps(
                sorted((f.name, f.stat().st_size) for f in path.glob("*.safetensors"))
            ).encode()
        ).hexdigest()
    else:
        ident = Store.open(path).fingerprint
    return hashlib.sha256(f"{kind}|{ident}|{suite.fingerprint}".encode()).hexdigest()[:20]


def get_reference(store: Store, suite: Suite, explicit: str | None = None) -> Reference:
    """The cached reference for (model, suite), recording it first if needed."""
    kind, path = choose_reference(store, explicit)
    cache = store.root / CACHE_DIR / f"{_key(kind, path, suite)}.npz"
    if cache.is_file():
        data = np.load(cache, allow_pickle=False)
        n = len(suite.prompts)
        return Reference(
            kind,
            str(path),
            [data[f"tokens_{i}"].tolist() for i in range(n)],
            [data[f"logprobs_{i}"].astype(np.float32) for i in range(n)],
        )
    ref = record_reference(kind, path, suite)
    cache.parent.mkdir(exist_ok=True)
    arrays = {f"tokens_{i}": np.array(t, dtype=np.int64) for i, t in enumerate(ref.tokens)}
    arrays.update({f"logprobs_{i}": lp for i, lp in enumerate(ref.logprobs)})
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(cache)  # atomic: a crash never leaves a half-written reference
    return ref


def record_reference(kind: str, path: Path, suite: Suite) -> Reference:
    if kind == "mlx-lm":
        model = load_reference(path)
        return _record(kind, path, model, suite)
    from engine.runtime import Engine

    # The same math streamed: model's own top-k, 16-bit experts, no cache needed.
    with Engine(path, EngineConfig(cache_bytes=0)) as engine:
        return _record(kind, path, engine.model, suite)


def _record(kind: str, path: Path, model: nn.Module, suite: Suite) -> Reference:
    tokens, lps = [], []
    for p in suite.prompts:
        toks = generate(model, list(p.ids), p.decode_tokens).tokens
        tokens.append(toks)
        lps.append(teacher_forced(model, list(p.ids), toks).astype(np.float32))
    return Reference(kind, str(path), tokens, lps)
