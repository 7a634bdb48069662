"""Calibration routing profile and the co-activation expert order used by `pack`.

Calibration runs prompts through mlx-lm's own in-memory model of the source checkpoint and
records which experts each MoE layer routes every token to. Experts that are often routed
together are then laid out next to each other so the engine can coalesce their reads.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.checkpoint import Checkpoint
from engine.errors import CheckpointError
from engine.families import get_experts, moe_blocks, set_experts, text_config
from engine.tomlfile import read_toml

# Fallback calibration when the source has no probe suite: a few seeded random prompts.
RANDOM_PROMPTS = 8
RANDOM_PROMPT_LEN = 64


class _Recorder(nn.Module):
    """Stands in for a block's stacked experts: records the routed expert ids, then runs it."""

    def __init__(self, inner: nn.Module, sink: Callable[[np.ndarray], None]) -> None:
        super().__init__()
        self.inner = inner
        self.sink = sink  # a callable, so mlx.nn keeps it as a plain attribute

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        # indices: (..., top_k) expert ids per token
        self.sink(np.array(indices).reshape(-1, indices.shape[-1]))
        return self.inner(x, indices)


def calibration_prompts(ckpt: Checkpoint, seed: int = 0) -> list[list[int]]:
    """The source's probe-suite prompts (token ids, or text when a tokenizer loads), else
    seeded random ids."""
    suite = ckpt.root / "probe_suite.toml"
    prompts: list[list[int]] = []
    if suite.is_file():
        prompts = _suite_prompts(suite, ckpt.root)
    if prompts:
        return prompts
    rng = np.random.default_rng(seed)
    vocab = int(text_config(ckpt.config)["vocab_size"])
    return [rng.integers(0, vocab, size=RANDOM_PROMPT_LEN).tolist() for _ in range(RANDOM_PROMPTS)]


def _suite_prompts(path: Path, model_dir: Path) -> list[list[int]]:
    doc = read_toml(path, "probe suite", CheckpointError)
    entries: list[Any] = doc.get("prompts") or doc.get("prompt") or []
    if not isinstance(entries, list):
        raise CheckpointError(f"{path}: `prompts` must be an array of tables ([[prompts]])")
    out: list[list[int]] = []
    texts: list[str] = []
    for entry in entries:
        ids = None
        if isinstance(entry, dict):
            for key in ("ids", "token_ids", "tokens", "prompt_ids"):
                if isinstance(entry.get(key), list):
                    ids = entry[key]
                    break
            if ids is None and isinstance(entry.get("text"), str):
                texts.append(entry["text"])
        elif isinstance(entry, list):
            ids = entry
        elif isinstance(entry, str):
            texts.append(entry)
        if ids:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise CheckpointError(f"{path}: prompt ids must be integers")
            out.append(list(ids))
    if texts:
        out.extend(_tokenize(texts, model_dir))
    return out


def _tokenize(texts: list[str], model_dir: Path) -> list[list[int]]:
    """Text prompts need the source's tokenizer; without one they are skipped, not fatal."""
    try:
        from mlx_lm.utils import load_tokenizer

        tok = load_tokenizer(model_dir)
    except Exception:
        return []
    return [list(tok.encode(t)) for t in texts]


def calibrate(
    ckpt: Checkpoint, prompts: list[list[int]]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Per MoE layer: routed counts (E,) and symmetric co-activation counts (E, E).

    Loads the whole model lazily through mlx-lm, so calibration needs the model's RAM; packing
    itself does not.
    """
    from mlx_lm.utils import load_model

    try:
        model, _ = load_model(ckpt.root, lazy=True)
    except Exception as e:  # mlx-lm raises whatever its constructors hit on an odd config
        raise CheckpointError(
            f"{ckpt.root}: mlx-lm cannot load the model for calibration ({type(e).__name__}: "
            f"{e}); check config.json against the weights"
        ) from None
    # MLX's CPU gather_mm only runs in float32; routing decisions barely depend on precision.
    model.set_dtype(mx.float32)
    routed: dict[int, list[np.ndarray]] = {}
    for layer, _path, block in moe_blocks(model):
        routed[layer] = []
        set_experts(block, _Recorder(get_experts(block), routed[layer].append))
    vocab = int(text_config(ckpt.config)["vocab_size"])
    for ids in prompts:
        if not ids:
            continue
        if min(ids) < 0 or max(ids) >= vocab:
            raise CheckpointError(
                f"{ckpt.root}: calibration prompt has token ids outside [0, {vocab})"
            )
        mx.eval(model(mx.array([ids])))
    e = ckpt.num_experts
    counts: dict[int, np.ndarray] = {}
    coact: dict[int, np.ndarray] = {}
    for layer, batches in routed.items():
        onehot = np.zeros((0, e), dtype=np.int64)
        if batches:
            idx = np.concatenate(batches)  # (tokens, top_k)
            onehot = np.zeros((idx.shape[0], e), dtype=np.int64)
            np.put_along_axis(onehot, idx.astype(np.int64), 1, axis=1)
        counts[layer] = onehot.sum(axis=0)
        c = onehot.T @ onehot  # (E, E): tokens routed to both experts
        np.fill_diagonal(c, 0)
        coact[layer] = c
    return counts, coact


def coactivation_order(counts: np.ndarray, coact: np.ndarray) -> list[int]:
    """Greedy chain: start at the most routed expert, then repeatedly append the unplaced
    expert most often co-routed with the last one (ties: more routed, then lower id)."""
    e = len(counts)
    placed = np.zeros(e, dtype=bool)
    # Stable ranking: by count descending, then id ascending.
    rank = sorted(range(e), key=lambda i: (-int(counts[i]), i))
    order = [rank[0]]
    placed[rank[0]] = True
    while len(order) < e:
        last = order[-1]
        best = max(
            (i for i in range(e) if not placed[i]),
            key=lambda i: (int(coact[last, i]), int(counts[i]), -i),
        )
        order.append(best)
        placed[best] = True
    return order
