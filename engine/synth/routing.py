"""Planted routing structure for synthetic checkpoints (measured by `engine.synth.measure`).

The residual stream of a synthetic model is dominated by the token embedding (layers add small
`drift`-scaled perturbations), so a router sees roughly its token's embedding:

    embedding(v) = a_dc * u0 + a_topic * T[topic(v)] + a_tok * r_v      (unit directions)
    router_l[e]  ~ skew * pop_l[e] * u0 + topic_strength * A_l[t, e] * T_t + token_noise * g_le

so the logit of expert e for token v is ~ skew*pop + topic_strength*[e in pool_l(topic)] +
token_noise*N(0,1): per-layer popularity skew (log-Zipf), topic persistence (a run of same-topic
tokens keeps drawing from one pool of experts) and cross-layer predictability (the hidden state
barely changes between layers). Within a topic, tokens alternate between `n_classes` classes
(think word pieces vs punctuation) whose pools only partly overlap: as in real models, the very
next token reuses fewer experts than the last few tokens together do, so an LRU cache hits
more often than previous-token reuse alone suggests. A "topic" below is one (topic, class) pair.

The lm_head makes greedy decoding walk one long cycle through the vocabulary in topic runs, so
decode keeps that locality instead of collapsing into a loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from engine.errors import CheckpointError
from engine.families import family_for

# The measuring half lives in engine.synth.measure; these names stay importable from here.
from engine.synth.measure import (  # noqa: F401
    RouteRecord,
    lru_hit_rate,
    record_routing,
    reuse_fraction,
    routing_stats,
)


@dataclass(frozen=True)
class RoutingKnobs:
    """Tunable routing structure; defaults land on the targets in docs/architecture.md."""

    # Weight of the per-expert log-Zipf popularity in the router logits (0 = no skew).
    skew: float = 0.8
    # Logit bonus of experts in the current topic's pool (temporal locality).
    topic_strength: float = 5.0
    # Std of the token-specific logit part (which pool members a token picks).
    token_noise: float = 1.0
    # Share of a layer's experts each (topic, class) prefers.
    pool_fraction: float = 0.25
    # Token classes alternating within a topic run, and the share of a class's pool that the
    # topic's other classes share (1 = classes are routed alike).
    n_classes: int = 2
    class_share: float = 0.45
    # Scale of every layer's output into the residual stream: larger = less cross-layer
    # predictability (next-layer recall falls) and noisier decode.
    drift: float = 0.6
    # Mean tokens per topic run in the decode walk and probe prompts.
    run_length: float = 32.0
    # Per-token chance that a probe prompt jumps to a random place of the walk.
    jump_prob: float = 0.04
    # Number of topics; 0 = one per 32 vocabulary entries, capped by hidden size.
    n_topics: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def depth_scale(config: dict[str, Any]) -> float:
    """Factor on every layer's drift: sqrt(8 / published depth) for a real-shape preset.

    The default knobs are calibrated on 8-layer models; a 61-layer model with the same drift
    per layer would bury the planted routing under accumulated noise by its last layers. This
    keeps the total drift at the last layer the same for any depth, and uses the published
    depth, not --layers, so a model cut to N layers has the full model's first N layers.
    """
    synth = config.get("synth") or {}
    published = synth.get("published_layers")
    return float(np.sqrt(8 / published)) if published else 1.0


# Token ids 0 (bos) and 1 (eos) are special: off the decode walk.
N_SPECIAL = 2

# Fractions of the embedding's (unit) norm along the DC, topic and token directions.
_A_DC, _A_TOPIC, _A_TOK = 0.5, 0.5, float(np.sqrt(0.5))
# Largest vocab x hidden whose token directions are drawn at once (bench: 8192 x 1024).
_WHOLE_MAX = 1 << 24


class RoutingPlan:
    """Every planted tensor of one synthetic model (embedding, lm_head, routers), from a seed."""

    def __init__(
        self, *, hidden: int, vocab: int, num_experts: int, seed: int, knobs: RoutingKnobs
    ) -> None:
        self.hidden, self.vocab, self.num_experts, self.knobs = hidden, vocab, num_experts, knobs
        self.seed = seed
        rng = np.random.default_rng([seed, 0x5EED])
        C = self.n_classes = max(1, knobs.n_classes)
        n_topics = knobs.n_topics or max(2, vocab // 32)
        self.n_topics = n_topics = max(2, min(n_topics, hidden // (2 * C)))
        # u0 and the (topic, class) directions are orthonormal so their logit terms do not mix.
        q, _ = np.linalg.qr(rng.standard_normal((hidden, n_topics * C + 1)))
        self.u0 = q[:, 0]  # [H]
        self.topic_dirs = q[:, 1:].T  # [T*C, H], row t*C + c
        self._basis = q  # [H, T*C+1]
        self.cycle, topic = self._walk(rng, vocab, n_topics, knobs.run_length)
        self.position = np.zeros(vocab, dtype=np.int64)
        self.position[self.cycle] = np.arange(len(self.cycle))
        # Classes alternate along the walk, so consecutive tokens of a run differ in class.
        self.topic = topic * C + self.position % C  # [V] row of topic_dirs
        # pred[v]: the token whose successor is v (-1 for bos/eos); lm_head row v points at it.
        self.pred = np.full(vocab, -1, dtype=np.int64)
        self.pred[np.roll(self.cycle, -1)] = self.cycle
        # Small plans draw all token directions from the plan's stream at once (the bytes every
        # toy preset has always had); a real vocabulary x hidden is gigabytes, so large plans
        # seed each row on its own and build any block of rows on demand.
        self._all_dirs: np.ndarray | None = None
        if vocab * hidden <= _WHOLE_MAX:
            self._all_dirs = self._orthogonal_unit(rng.standard_normal((vocab, hidden)))  # [V, H]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RoutingPlan:
        """The plan a synthetic checkpoint was written with (its config.json `synth` record)."""
        synth = config.get("synth")
        if not isinstance(synth, dict):
            raise CheckpointError("config.json has no `synth` record: not a synthetic checkpoint")
        fields = RoutingKnobs.__dataclass_fields__
        knobs = RoutingKnobs(**{k: v for k, v in synth.items() if k in fields})
        # Any MoE config key naming the routed experts, so a plan needs no runnable family.
        keys = ("num_experts", "num_local_experts", "n_routed_experts")
        experts = next((int(config[k]) for k in keys if k in config), None)
        if experts is None:
            experts = int(config[family_for(config).num_experts_key])  # raises a clear error
        return cls(
            hidden=int(config["hidden_size"]),
            vocab=int(config["vocab_size"]),
            num_experts=experts,
            seed=int(synth["seed"]),
            knobs=knobs,
        )

    def successor(self) -> dict[int, int]:
        """Token -> the token greedy decoding should emit next (the planted walk)."""
        return dict(zip(self.cycle.tolist(), np.roll(self.cycle, -1).tolist(), strict=True))

    @staticmethod
    def _walk(
        rng: np.random.Generator, vocab: int, n_topics: int, run_length: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """One cycle through all non-special tokens in topic runs; topic[v] = topic of v's run.

        bos/eos stay off the cycle so greedy decoding never emits them (and never stops early).
        """
        cycle = N_SPECIAL + rng.permutation(vocab - N_SPECIAL)
        topic = np.zeros(vocab, dtype=np.int64)
        pos, prev = 0, -1
        while pos < len(cycle):
            n = max(3, int(rng.geometric(1.0 / run_length)))
            t = int(rng.integers(n_topics - 1))
            t = t + 1 if t >= prev else t  # never the same topic twice in a row
            topic[cycle[pos : pos + n]] = t
            pos, prev = pos + n, t
        return cycle, topic

    def _orthogonal_unit(self, x: np.ndarray) -> np.ndarray:
        """Rows of x with the DC/topic subspace projected out, scaled to unit norm."""
        x = x - (x @ self._basis) @ self._basis.T
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    # ---- planted tensors (float32 numpy) -------------------------------------------------------

    def token_dirs(self, rows: np.ndarray) -> np.ndarray:
        """[n, H] unit token directions of the given token ids."""
        if self._all_dirs is not None:
            return self._all_dirs[rows]
        # float32 throughout: a real vocabulary takes minutes in float64 and gains nothing.
        g = np.empty((len(rows), self.hidden), dtype=np.float32)
        for i, v in enumerate(rows):
            rng = np.random.default_rng([self.seed, 0x70CE, int(v)])
            g[i] = rng.standard_normal(self.hidden, dtype=np.float32)
        b = self._basis.astype(np.float32)
        g -= (g @ b) @ b.T
        return g / np.linalg.norm(g, axis=-1, keepdims=True)

    def embedding(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of the [V, H] embedding, rms 1 per row: DC + topic + token parts."""
        return self.embedding_rows(np.arange(lo, self.vocab if hi is None else hi))

    def embedding_rows(self, rows: np.ndarray) -> np.ndarray:
        """The embedding rows of token ids `rows`: [n, H]."""
        e = (
            _A_DC * self.u0
            + _A_TOPIC * self.topic_dirs[self.topic[rows]]
            + _A_TOK * self.token_dirs(rows)
        )
        return (e * np.sqrt(self.hidden)).astype(np.float32)

    def lm_head(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Rows [lo, hi) of the [V, H] lm_head: row succ(v) is v's token direction, so
        argmax(next) = succ(current); bos/eos rows are 0 (logit 0, never top)."""
        rows = np.arange(lo, self.vocab if hi is None else hi)
        out = np.zeros((len(rows), self.hidden), dtype=np.float32)
        on = self.pred[rows] >= 0
        out[on] = self.token_dirs(self.pred[rows][on])
        return out

    def router(self, layer: int) -> np.ndarray:
        """[E, H] router of one MoE layer (row e scores expert e)."""
        k, E, H = self.knobs, self.num_experts, self.hidden
        rng = np.random.default_rng([self.seed, 0x60A7E, layer])
        # log-Zipf popularity over a per-layer random expert order, by rank *quantile* (64 =
        # the calibration size) so every preset gets the same skew profile; mean 0.
        pop = -np.log1p(rng.permutation(E) * (64.0 / E)).astype(np.float64)
        pop -= pop.mean()
        C = self.n_classes
        pool = max(1, round(k.pool_fraction * E))
        shared = round(k.class_share * pool) if C > 1 else pool
        own = pool - shared
        affinity = np.zeros((self.n_topics * C, E))  # [T*C, E]
        for t in range(self.n_topics):
            # A core shared by the topic's classes + a disjoint part per class.
            pick = rng.choice(E, size=min(E, shared + C * own), replace=False)
            for c in range(C):
                members = np.r_[pick[:shared], pick[shared + c * own : shared + (c + 1) * own]]
                affinity[t * C + c, members] = 1.0
        g = self._orthogonal_unit(rng.standard_normal((E, H)))  # [E, H]
        s = np.sqrt(H)  # the router sees RMSNorm(h) ~ sqrt(H) * unit embedding
        w = (
            np.outer(k.skew * pop / (s * _A_DC), self.u0)
            + (k.topic_strength / (s * _A_TOPIC)) * affinity.T @ self.topic_dirs
            + (k.token_noise / _A_TOK) * g
        )
        return w.astype(np.float32)

    # ---- probe prompts -----------------------------------------------------------------------

    def prompts(self, n: int, length: int) -> list[list[int]]:
        """Token ids that follow the decode walk's topic runs, with occasional random jumps."""
        rng = np.random.default_rng([self.seed, 0x9809E])
        out = []
        for _ in range(n):
            pos = int(rng.integers(len(self.cycle)))
            ids = []
            for _ in range(length):
                ids.append(int(self.cycle[pos]))
                pos = (
                    int(rng.integers(len(self.cycle)))
                    if rng.random() < self.knobs.jump_prob
                    else (pos + 1) % len(self.cycle)
                )
            out.append(ids)
        return out
