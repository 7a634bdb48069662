"""The contract between the engine and whoever tunes it: knobs, metrics, families, presets.

What a search loop (autoresearch/) may rely on without importing the engine's machinery: the
knobs of an EngineConfig with their types and allowed values, the numeric fields of the probe's
metrics JSON with the direction in which each is better, the model families `engine synth`
builds, and its presets. Defined here once; engine/config.py validates with these knobs,
`engine synth` offers these families and presets, autoresearch checks study files against them.

This module is deliberately light (the standard library and engine.errors only: no MLX, no
numpy), so reading a study file or a config never loads a compute stack. The meaning of each
knob (and why it exists) is documented on its EngineConfig field; docs/architecture.md shows
where the contract sits in the data flow.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.errors import ConfigError

__all__ = [
    "ALIGN",
    "DIRECTIONS",
    "FIGURES",
    "HF_SYNTH_FAMILIES",
    "KNOBS",
    "METRICS",
    "REAL_PRESETS",
    "SYNTH_FAMILIES",
    "SYNTH_PRESETS",
    "TOY_PRESETS",
    "TRACE_RANK_DEPTH",
    "TRACE_RANK_WIDTH",
    "Direction",
    "Knob",
    "Metric",
]

ALIGN = 4096  # O_DIRECT needs buffers, offsets and sizes aligned to the logical block size
# A routing trace (engine.measure.trace) ranks the next TRACE_RANK_DEPTH layers'
# TRACE_RANK_WIDTH likeliest experts: the deepest/widest prefetch the simulator can model (the
# search spaces search prefetch_depth 1-4 and prefetch_width 0-16).
TRACE_RANK_DEPTH = 4
TRACE_RANK_WIDTH = 32

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")


# ---- knobs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One EngineConfig knob: its type and the values it accepts."""

    name: str
    type: type  # int, float or str; bool is never accepted for a number
    choices: tuple[Any, ...] = ()  # when given, the only values allowed
    minimum: float | None = None
    maximum: float | None = None
    open_minimum: bool = False  # the minimum itself is excluded: (0, 1] rather than [0, 1]
    multiple_of: int | None = None
    optional: bool = False  # None is allowed (the model's/store's own value, or no limit)

    def check(self, value: Any) -> None:
        """Raise ConfigError, naming the knob and what it accepts, unless `value` is allowed."""
        if value is None and self.optional:
            return
        if self.choices:
            # Same type, not just equal: 16.0 == 16 and True == 1, yet neither is a valid value.
            if not any(type(value) is type(c) and value == c for c in self.choices):
                allowed = ", ".join(repr(c) for c in self.choices)
                raise ConfigError(f"{self.name} must be one of {allowed}, got {value!r}")
        elif self.type is float:
            self._check_float(value)
        elif self.type is int:
            self._check_int(value)

    def _check_int(self, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{self.name} must be an integer, got {value!r}")
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = [f">= {low}"] * (low is not None) + [f"<= {high}"] * (high is not None)
            raise ConfigError(f"{self.name} must be {' and '.join(bounds)}, got {value}")
        if self.multiple_of and value % self.multiple_of:
            why = " (O_DIRECT alignment)" if self.multiple_of == ALIGN else ""
            raise ConfigError(
                f"{self.name} must be a multiple of {self.multiple_of}{why}, got {value}"
            )

    def _check_float(self, value: Any) -> None:
        low, high = self.minimum, self.maximum
        number = isinstance(value, int | float) and not isinstance(value, bool)
        # Written as "inside" so that NaN, which compares False with everything, is outside.
        inside = number and (low is None or (value > low if self.open_minimum else value >= low))
        if not (inside and (high is None or value <= high)):
            interval = f"{'(' if self.open_minimum else '['}{low:g}, {high:g}]"
            raise ConfigError(f"{self.name} must be a number in {interval}, got {value!r}")


def _choice(name: str, *choices: Any, optional: bool = False) -> Knob:
    return Knob(name, type(choices[0]), choices=choices, optional=optional)


# In EngineConfig's field order (a test holds the two together).
KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        Knob("cache_bytes", int, minimum=0),
        _choice("cache_policy", "lru", "lfu", "pinned"),
        Knob("pinned_fraction", float, minimum=0.0, maximum=1.0),
        _choice("io_mode", "direct", "buffered", "mmap"),
        Knob("read_chunk_bytes", int, minimum=ALIGN, multiple_of=ALIGN),
        Knob("io_threads", int, minimum=1, maximum=256),
        _choice("prefetch", "none", "next_layer", "previous_token"),
        Knob("prefetch_depth", int, minimum=0, maximum=64),
        Knob("prefetch_width", int, minimum=0, maximum=4096),
        Knob("experts_per_token", int, minimum=1, maximum=4096, optional=True),
        _choice("quant_bits", 16, 8, 4, 3, 2, optional=True),
        _choice("quant_group_size", 32, 64, 128, optional=True),
        _choice("layout", "natural", "coactivation", optional=True),
        Knob("memory_budget_bytes", int, minimum=1, optional=True),
        Knob(
            "expert_memory_fraction",
            float,
            minimum=0.0,
            maximum=1.0,
            open_minimum=True,
            optional=True,
        ),
        _choice("compute_dtype", "float32", "model"),
        _choice("compute_path", "auto", "cpu", "mlx"),
        _choice("compute_wait", "spin", "sleep"),
    )
}


# ---- metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """A numeric field of the probe's metrics JSON (units in the name)."""

    name: str
    direction: Direction | None  # which way is better; None: a count, not a figure of merit
    meaning: str


# What objectives and constraints may name, in the order the probe reports them.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("ttft_s", "minimize", "time to first token"),
        Metric("prefill_tok_s", "maximize", "prompt tokens per second"),
        Metric("decode_tok_s", "maximize", "sustained decode tokens per second"),
        Metric("latency_p50_s", "minimize", "median decode step latency"),
        Metric("latency_p99_s", "minimize", "99th percentile decode step latency"),
        Metric("latency_max_s", "minimize", "slowest decode step"),
        Metric("bytes_read_per_token", "minimize", "expert bytes read from the store per token"),
        Metric("cache_hit_rate", "maximize", "share of expert requests the engine cache served"),
        Metric("prefetch_precision", "maximize", "share of prefetched experts that were used"),
        Metric("prefetch_recall", "maximize", "share of used experts that were prefetched"),
        Metric("io_stall_fraction", "minimize", "share of the time spent waiting on reads"),
        Metric("peak_rss_bytes", "minimize", "peak resident memory of the process"),
        Metric("page_cache_bytes", "minimize", "the store's pages held by the OS page cache"),
        Metric("memory_bytes", "minimize", "peak RSS + the store's page-cache pages"),
        Metric("kl_mean", "minimize", "mean KL divergence from the reference run"),
        Metric("top1_agreement", "maximize", "share of next tokens equal to the reference's"),
        Metric("tokens", None, "decode tokens measured (the sustained ones)"),
    )
}
# The figures of merit, each reported by every probe run (beside `tokens`, their count).
FIGURES: tuple[str, ...] = tuple(n for n, m in METRICS.items() if m.direction is not None)


# ---- synthetic models ------------------------------------------------------------------------

TINY_FAMILIES_FILE = Path(__file__).parent / "synth" / "data" / "tiny_families.toml"


def _tiny_families() -> tuple[str, ...]:
    # The data file engine synth builds tiny models from: a family is one [families.X] table,
    # so a family added there is offered everywhere with no code change.
    return tuple(tomllib.loads(TINY_FAMILIES_FILE.read_text())["families"])


# Every model family `engine synth --family` builds (tiny preset: mlx-community layout) ...
SYNTH_FAMILIES: tuple[str, ...] = _tiny_families()
# ... of which these are also written in HF layout, at every toy preset.
HF_SYNTH_FAMILIES: tuple[str, ...] = ("qwen3_moe", "mixtral", "deepseek_v3", "qwen2_moe", "olmoe")

# `engine synth --preset`: toy sizes (tests, demo, I/O-bound benchmarks) ...
TOY_PRESETS: tuple[str, ...] = ("tiny", "small", "bench")
# ... and published models' real shapes (engine/synth_presets.py holds their data).
REAL_PRESETS: tuple[str, ...] = (
    "qwen3-30b-a3b",
    "olmoe-1b-7b",
    "mixtral-8x7b",
    "kimi-k2",
    "qwen3.5-397b-a17b",
)
SYNTH_PRESETS: tuple[str, ...] = (*TOY_PRESETS, *REAL_PRESETS)
