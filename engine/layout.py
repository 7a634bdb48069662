"""Calibration routing profile and the co-activation expert order used by `pack`.

Calibration runs prompts through mlx-lm's own in-memory model of the source checkpoint and
records which experts each MoE layer routes every token to. Experts that are often routed
together are then laid out next to each other so the engine can coalesce their reads.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from engine.checkpoint import Checkpoint
from engine.errors import CheckpointError
from engine.families import text_config
from engine.routes import record_routes
from engine.suite import load_suite
from engine.tokenizer import LazyTokenizer, has_tokenizer

# Fallback calibration when the source has no probe suite: a few seeded random prompts.
RANDOM_PROMPTS = 8
RANDOM_PROMPT_LEN = 64


def calibration_prompts(ckpt: Checkpoint, seed: int = 0) -> list[list[int]]:
    """The source's probe-suite prompts (engine.suite's format; text needs the source's
    tokenizer), else seeded random ids."""
    vocab = int(text_config(ckpt.config)["vocab_size"])
    path = ckpt.root / "probe_suite.toml"
    if path.is_file():
        fix = "fix or remove the checkpoint's tokenizer files, or give the suite's prompts as ids"
        tok = LazyTokenizer(ckpt.root, CheckpointError, fix) if has_tokenizer(ckpt.root) else None
        suite = load_suite(path, vocab_size=vocab, tokenizer=tok)
        return [list(p.ids) for p in suite.prompts]
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=RANDOM_PROMPT_LEN).tolist() for _ in range(RANDOM_PROMPTS)]


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
    routed = record_routes(model)
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
    for layer, calls in routed.items():
        onehot = np.zeros((0, e), dtype=np.int64)
        if calls:
            idx = np.concatenate([ids for _x, ids in calls])  # (tokens, top_k)
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
