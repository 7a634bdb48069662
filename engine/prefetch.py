"""Speculative expert loading: predict the next layers' experts and read them in the background.

Prefetched bytes wait in a small staging area, not in the expert cache, so a wrong guess can
never evict an expert the model still needs, and outputs cannot change (the bytes are the same
bytes a demand read returns). Precision/recall are counted on the predicted sets.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import mlx.core as mx
import numpy as np

Key = tuple[int, int]  # (layer, expert)
Hidden = mx.array | np.ndarray  # a layer's input rows (T, D)
# x (T, D), numpy on the CPU path -> routing scores (T, E) float32 numpy; higher = chosen
Router = Callable[[Hidden], np.ndarray]


def rank_experts(router: Router, x: Hidden) -> list[int]:
    """Experts by descending router score for the newest token (last row of x); stable ties,
    so the trace simulator ranks exactly the same way."""
    s = router(x)[-1]
    return [int(e) for e in np.argsort(-s, kind="stable")]


@dataclass
class PrefetchStats:
    predicted: int = 0  # experts predicted (summed over predicted layer-steps)
    used: int = 0  # experts the predicted layer-steps really used
    correct: int = 0  # predicted and used
    issued: int = 0  # background reads started (predicted, not cached, not staged)
    consumed: int = 0  # staged reads that a layer then used
    wasted: int = 0  # staged reads dropped unused

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.used if self.used else 0.0


@dataclass
class Prefetcher:
    """Owns the predictions and the staging area; the provider asks it at each MoE layer."""

    mode: str  # "none" | "next_layer" | "previous_token"
    depth: int
    width: int  # experts per predicted layer
    moe_layers: tuple[int, ...]
    routers: dict[int, Router]  # MoE layer -> its router (for next_layer)
    submit: Callable[[int, int], Future]  # background read of (layer, expert)
    is_cached: Callable[[Key], bool]
    # Done-callback for a guess dropped after its read finished: gives back what the read
    # holds (an arena slot on the CPU path).
    drop: Callable[[Future], None] = lambda _fut: None
    stats: PrefetchStats = field(default_factory=PrefetchStats)
    _staged: dict[Key, Future] = field(default_factory=dict)
    _predicted: dict[int, set[int]] = field(default_factory=dict)
    _last_used: dict[int, list[int]] = field(default_factory=dict)
    _pos: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pos = {layer: i for i, layer in enumerate(self.moe_layers)}

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.depth > 0 and self.width > 0

    @property
    def staged_count(self) -> int:
        return len(self._staged)

    def take(self, layer: int, experts: list[int]) -> dict[int, Future]:
        """Called when `layer` runs: account the prediction, hand over staged reads it uses."""
        used = set(experts)
        predicted = self._predicted.pop(layer, None)
        if predicted is not None:
            self.stats.predicted += len(predicted)
            self.stats.used += len(used)
            self.stats.correct += len(predicted & used)
        handed: dict[int, Future] = {}
        for key in [k for k in self._staged if k[0] == layer]:
            fut = self._staged.pop(key)
            if key[1] in used:
                handed[key[1]] = fut
                self.stats.consumed += 1
            else:
                self.discard(fut)
                self.stats.wasted += 1
        return handed

    def discard(self, fut: Future) -> None:
        """Drop one staged read: cancelled if still queued, else given back when done."""
        if not fut.cancel():  # already read: its slot goes back once it is done
            fut.add_done_callback(self.drop)

    def after_fetch(self, layer: int, x: Hidden) -> None:
        """Predict and start reads for the next `depth` MoE layers, given layer's input x (T, D)."""
        if not self.active:
            return
        if self.mode == "previous_token":
            # Remember this token's top-`width` experts here by router score, for the next
            # token's guess (after a prefill: the prompt's last token, not the whole prompt).
            self._last_used[layer] = rank_experts(self.routers[layer], x)[: self.width]
        pos = self._pos[layer]
        for target in self.moe_layers[pos + 1 : pos + 1 + self.depth]:
            guess = self._predict(target, x)
            if not guess:
                continue
            self._predicted.setdefault(target, set()).update(guess)
            for e in guess:
                key = (target, e)
                if key in self._staged or self.is_cached(key):
                    continue
                self._staged[key] = self.submit(target, e)
                self.stats.issued += 1

    def _predict(self, target: int, x: Hidden) -> list[int]:
        if self.mode == "previous_token":
            # The previous token's best experts at `target` (target has not run yet this token).
            return self._last_used.get(target, [])
        # The newest token only: a prompt's union of guesses would stage up to every expert
        # of the layer at once, more than a memory budget reserves (depth x width experts).
        scores = self.routers[target](x)[-1]  # (E,)
        w = min(self.width, scores.size)
        return sorted(int(e) for e in np.argpartition(-scores, w - 1)[:w])

    def drain(self) -> None:
        """Drop every staged read (end of a run); waits for none of them."""
        for fut in self._staged.values():
            self.discard(fut)
        self.stats.wasted += len(self._staged)
        self._staged.clear()
        self._predicted.clear()
