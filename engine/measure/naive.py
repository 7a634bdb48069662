"""Naive streaming: the baseline of `bench` (docs/architecture.md) (what a first attempt would do).

Per token and layer, each routed expert's tensors are read straight from the SOURCE checkpoint's
safetensors (tensor-level reads, no store, no engine cache, no prefetch, one expert at a time)
and computed with the same streaming block as the engine. The dense weights come from the store,
which holds them unchanged, so on a 16-bit store its logits equal the engine's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from engine.checkpoint import Checkpoint, ExpertPart, open_checkpoint
from engine.errors import CheckpointError
from engine.families import get_experts, moe_blocks, set_experts
from engine.generate import Generation, generate
from engine.model import compute_dtype, load_streaming_model
from engine.pagecache import evict_all
from engine.store import Store, mx_dtype, np_dtype
from engine.streaming import StreamingSwitchGLU, Weights, prepare_weights


@dataclass
class NaiveStats:
    requests: int = 0  # expert fetches (every one is a read: nothing is cached)
    bytes_read: int = 0
    read_s: float = 0.0  # time spent reading + decoding expert bytes


class NaiveProvider:
    """`fetch(layer, experts, x)` like ExpertProvider, but every call reads the checkpoint."""

    def __init__(self, ckpt: Checkpoint, dtype: mx.Dtype | None) -> None:
        self.ckpt = ckpt
        self.dtype = dtype
        self.blocks = {b.layer: b for b in ckpt.blocks}
        self.stats = NaiveStats()

    def fetch(self, layer: int, experts: list[int], x: mx.array) -> list[Weights]:
        t0 = time.perf_counter()
        block = self.blocks[layer]
        out = []
        for e in experts:
            out.append({p.name: self._tensor(p) for p in self.ckpt.expert_parts(block, e)})
        out = [prepare_weights(w, self.dtype) for w in out]
        self.stats.requests += len(experts)
        self.stats.read_s += time.perf_counter() - t0
        return out

    def _tensor(self, part: ExpertPart) -> mx.array:
        raw = self.ckpt.read(part)  # opens, seeks and reads: deliberately the plain way
        self.stats.bytes_read += len(raw)
        dtype = part.ref.dtype
        arr = mx.array(np.frombuffer(raw, np_dtype(dtype)).reshape(part.shape))
        return arr.view(mx_dtype(dtype)) if dtype == "bfloat16" else arr


class NaiveStreaming:
    """The store's model with every expert block fed by a NaiveProvider on `source`."""

    def __init__(
        self, store: Store, source: str | Path | None = None, compute: str = "float32"
    ) -> None:
        src = source if source is not None else source_path(store)
        if src is None:
            raise CheckpointError(
                f"{store.root}: the manifest records no source checkpoint; pass --source DIR"
            )
        self.ckpt = open_checkpoint(src)
        if self.ckpt.num_experts != store.num_experts or tuple(
            b.layer for b in self.ckpt.blocks
        ) != tuple(store.moe_layers):
            raise CheckpointError(
                f"{src}: its experts ({len(self.ckpt.blocks)} MoE layers x "
                f"{self.ckpt.num_experts}) do not match store {store.root}; pass the checkpoint "
                "the store was packed from"
            )
        dtype = compute_dtype(compute)
        self.model, self.model_config = load_streaming_model(store, dtype)
        self.provider = NaiveProvider(self.ckpt, dtype)
        # The source's own expert quantization, not the store's: naive computes what it reads.
        quant = None
        if self.ckpt.quant is not None:
            quant = (self.ckpt.quant["bits"], self.ckpt.quant["group_size"])
        for layer, _, block in moe_blocks(self.model):
            old = get_experts(block)
            fresh = StreamingSwitchGLU(layer, old.activation, quant, old._projections)
            fresh._num_experts = old._num_experts
            fresh.bind(self.provider, dtype)
            set_experts(block, fresh)

    @property
    def source_files(self) -> list[Path]:
        return sorted({r.file for r in self.ckpt.tensors.values()})

    def evict(self) -> None:
        """Drop the source from the OS page cache so the next run reads the disk (cold)."""
        evict_all(self.source_files)

    def generate(
        self, prompt: Sequence[int], max_tokens: int, *, keep_logits: bool = False
    ) -> Generation:
        return generate(self.model, prompt, max_tokens, keep_logits=keep_logits)

    def counters(self) -> dict[str, Any]:
        s = self.provider.stats
        return {"expert_requests": s.requests, "bytes_read": s.bytes_read, "read_s": s.read_s}


def source_path(store: Store) -> Path | None:
    """The checkpoint dir the store was packed from (as recorded), None if not recorded."""
    src = (store.manifest.get("source") or {}).get("path")
    return Path(src) if src else None
