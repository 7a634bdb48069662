"""Routing traces: which experts each layer-step fetched, compact and replayable (numpy .npz).

One record per MoE layer call ("fetch"): the prompt and phase (prefill/decode) it belongs to, the
layer, the unique experts it routed to, their router scores (decode), and — for prefetch
simulation — the ranking that this layer's and the next layers' routers give the newest token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import contract
from engine.errors import ProbeError
from engine.prefetch import Hidden, Router, rank_experts

PREFILL, DECODE = 0, 1
RANK_DEPTH = contract.TRACE_RANK_DEPTH  # next layers whose router rankings are recorded
RANK_WIDTH = contract.TRACE_RANK_WIDTH  # experts ranked per layer (row 0: the layer itself)


@dataclass
class Trace:
    meta: dict[str, Any]
    layer: np.ndarray  # (N,) int32
    prompt: np.ndarray  # (N,) int32
    phase: np.ndarray  # (N,) int8: PREFILL or DECODE
    step: np.ndarray  # (N,) int32: token step within the prompt (0 = prefill)
    offsets: np.ndarray  # (N+1,) int64 CSR into experts/scores
    experts: np.ndarray  # (M,) int32, unique routed experts of each fetch
    scores: np.ndarray  # (M,) float32 router scores of those experts (NaN for prefill)
    rank: np.ndarray  # (N, 1 + RANK_DEPTH, RANK_WIDTH) int32: row 0 own layer, d: layer+d

    def __len__(self) -> int:
        return int(self.layer.size)

    def fetch_experts(self, i: int) -> np.ndarray:
        return self.experts[self.offsets[i] : self.offsets[i + 1]]

    def save(self, path: str | Path) -> None:
        try:
            np.savez_compressed(
                path,
                meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8),
                layer=self.layer,
                prompt=self.prompt,
                phase=self.phase,
                step=self.step,
                offsets=self.offsets,
                experts=self.experts,
                scores=self.scores,
                rank=self.rank,
            )
        except OSError as e:
            raise ProbeError(f"{path}: cannot write the routing trace ({e.strerror or e})") from e

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        d = np.load(path, allow_pickle=False)
        meta = json.loads(bytes(d["meta"]).decode())
        return cls(
            meta,
            d["layer"],
            d["prompt"],
            d["phase"],
            d["step"],
            d["offsets"],
            d["experts"],
            d["scores"],
            d["rank"],
        )


@dataclass
class Tracer:
    """Attached to the provider; the probe tells it which prompt and step is running."""

    moe_layers: tuple[int, ...]
    routers: dict[int, Router]
    meta: dict[str, Any]
    prompt: int = 0
    step: int = 0
    _rows: list[tuple[int, int, int, int]] = field(default_factory=list)
    _experts: list[np.ndarray] = field(default_factory=list)
    _scores: list[np.ndarray] = field(default_factory=list)
    _ranks: list[np.ndarray] = field(default_factory=list)

    def on_fetch(self, layer: int, experts: list[int], x: Hidden) -> None:
        phase = PREFILL if self.step == 0 else DECODE
        self._rows.append((layer, self.prompt, phase, self.step))
        exp = np.asarray(experts, dtype=np.int32)
        self._experts.append(exp)
        if phase == DECODE:
            s = self.routers[layer](x)[-1]
            self._scores.append(s[exp].astype(np.float32))
        else:
            self._scores.append(np.full(exp.size, np.nan, dtype=np.float32))
        ranks = np.full((1 + RANK_DEPTH, RANK_WIDTH), -1, dtype=np.int32)
        pos = self.moe_layers.index(layer)
        for d, target in enumerate(self.moe_layers[pos : pos + 1 + RANK_DEPTH]):
            order = rank_experts(self.routers[target], x)[:RANK_WIDTH]  # as the prefetcher ranks
            ranks[d, : len(order)] = order
        self._ranks.append(ranks)

    def finish(self) -> Trace:
        rows = np.array(self._rows, dtype=np.int64).reshape(-1, 4)
        sizes = np.array([e.size for e in self._experts], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
        return Trace(
            meta=self.meta,
            layer=rows[:, 0].astype(np.int32),
            prompt=rows[:, 1].astype(np.int32),
            phase=rows[:, 2].astype(np.int8),
            step=rows[:, 3].astype(np.int32),
            offsets=offsets,
            experts=np.concatenate(self._experts) if self._experts else empty_i,
            scores=np.concatenate(self._scores) if self._scores else empty_f,
            rank=(
                np.stack(self._ranks)
                if self._ranks
                else np.zeros((0, 1 + RANK_DEPTH, RANK_WIDTH), np.int32)
            ),
        )
