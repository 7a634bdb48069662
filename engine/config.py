"""EngineConfig: every engine knob in one frozen dataclass, validated at construction.

With engine/contract.py (knob types and ranges, metric names, families, presets) this is the
contract between the engine and the search loop: a trial is an EngineConfig, an exported tuned
file is an EngineConfig TOML (`[engine]` table; other tables are provenance).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from engine import contract
from engine.errors import ConfigError
from engine.tomlfile import read_toml

# Allowed values live in engine/contract.py (the one definition); these names serve pack's
# variant checks.
ALIGN = contract.ALIGN  # O_DIRECT alignment
QUANT_BITS = contract.KNOBS["quant_bits"].choices
QUANT_GROUP_SIZES = contract.KNOBS["quant_group_size"].choices
LAYOUTS = contract.KNOBS["layout"].choices

TABLES = ("engine", "provenance")  # the tables a config TOML may have (export writes both)

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of one engine run. Field names are fixed (docs/architecture.md); each says why."""

    # Expert cache budget in bytes; 0 = no engine cache (rely on the OS page cache or nothing).
    cache_bytes: int = 2 * GiB
    # Eviction: lru, lfu, or pinned (a hot set from the store's routing profile + LRU for the rest).
    cache_policy: str = "lru"
    # Share of cache_bytes given to the pinned hot set when cache_policy = "pinned".
    pinned_fraction: float = 0.5
    # How expert bytes are read: direct (O_DIRECT, no page cache), buffered (pread), mmap.
    io_mode: str = "buffered"
    # Largest single read; a bigger expert is split into chunks read in parallel.
    read_chunk_bytes: int = 1 * MiB
    # Reader threads, i.e. the I/O queue depth.
    io_threads: int = 4
    # Speculative loading: none, next_layer (next layer's router on the current hidden state),
    # previous_token (the experts the previous token used). Never changes outputs.
    prefetch: str = "none"
    # How many layers ahead prefetch looks.
    prefetch_depth: int = 1
    # Experts fetched per predicted layer; 0 = the model's top-k.
    prefetch_width: int = 0
    # Override the model's top-k (fewer experts = faster, lower quality); None = model's own.
    experts_per_token: int | None = None
    # Store variant: bits per expert weight (16 = unquantized); None = whatever the store holds.
    quant_bits: int | None = None
    # Store variant: quantization group size; None = whatever the store holds.
    quant_group_size: int | None = None
    # Store variant: expert order on disk; None = whatever the store holds.
    layout: str | None = None
    # Hard RAM budget for the whole run (process RSS + engine cache + the store's page-cache
    # pages); None = unlimited. Enforced by shrinking caches and evicting pages.
    memory_budget_bytes: int | None = None
    # The same budget said relative to the model, for studies that must stay in the streaming
    # regime on any machine: the model's own minimum (dense weights, one token's experts,
    # runtime) + this fraction of the model's expert bytes, experts counted at the precision of
    # the checkpoint the store was packed from (so every store variant of one model gets the
    # same bytes). Excludes memory_budget_bytes.
    expert_memory_fraction: float | None = None
    # Dtype of weights and activations at compute time: "float32" (MLX's CPU kernels are fast
    # and complete in fp32; its CPU gather_mm supports nothing else) or "model" (the checkpoint's
    # dtype, e.g. bfloat16: half the RAM for cached 16-bit experts, slower on CPU).
    compute_dtype: str = "float32"
    # Who does the matrix math: "cpu" (the engine's numba kernels on weights in a repacked
    # layout: near the RAM-bandwidth limit on CPUs, where MLX runs a reference BLAS), "mlx"
    # (MLX's own ops: bit-identical to mlx-lm, and the path on Metal/CUDA), or "auto" (cpu
    # when MLX's default device is the CPU, else mlx).
    compute_path: str = "auto"
    # Between kernel calls the CPU path's worker threads "spin" (no wake-up latency: fastest
    # when compute-bound) or "sleep" (the cores go to the reader threads, which read, check and
    # repack misses: faster when I/O-bound). OpenMP's wait policy: process-wide, so it takes
    # effect for the first engine of a process (each trial is one).
    compute_wait: str = "spin"

    def __post_init__(self) -> None:
        # Types and ranges: engine/contract.py, the same table autoresearch checks spaces with.
        for knob in contract.KNOBS.values():
            knob.check(getattr(self, knob.name))
        if self.expert_memory_fraction is not None and self.memory_budget_bytes is not None:
            raise ConfigError(
                "set memory_budget_bytes or expert_memory_fraction, not both "
                "(the fraction defines the budget)"
            )

    # ---- conversions -------------------------------------------------------------------------

    @classmethod
    def knob_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        """Knobs as plain values; unset optional knobs are omitted (TOML has no null)."""
        out = {}
        for name in self.knob_names():
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> EngineConfig:
        unknown = sorted(set(data) - set(cls.knob_names()))
        if unknown:
            raise ConfigError(
                f"{source}: unknown knob(s) {', '.join(unknown)}; "
                f"known knobs are {', '.join(cls.knob_names())}"
            )
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> EngineConfig:
        return dataclasses.replace(self, **changes)

    def to_toml(self, path: str | Path, extra_tables: dict[str, Any] | None = None) -> None:
        """Write `[engine]` plus optional provenance tables; atomic so a crash leaves no stub."""
        path = Path(path)
        doc: dict[str, Any] = {"engine": self.to_dict()}
        if extra_tables:
            doc.update(extra_tables)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(tomli_w.dumps(doc))
        tmp.replace(path)

    @classmethod
    def from_toml(cls, path: str | Path) -> EngineConfig:
        """Read the `[engine]` table of a config TOML (a bare table of knobs works too).

        Tables other than [engine] and [provenance] are refused by name: a misspelt `[engin]`
        must not run silently on defaults."""
        path = Path(path)
        doc = read_toml(path, "config file", ConfigError)
        unknown = sorted(k for k, v in doc.items() if isinstance(v, dict) and k not in TABLES)
        if unknown:
            raise ConfigError(
                f"{path}: unknown table(s) {', '.join(f'[{k}]' for k in unknown)}; a config has "
                "[engine] (the knobs) and optionally [provenance]"
            )
        table = doc.get("engine", None)
        if table is None:
            table = {k: v for k, v in doc.items() if not isinstance(v, dict)}
        elif not isinstance(table, dict):
            raise ConfigError(f"{path}: [engine] must be a table of knobs")
        else:
            stray = sorted(k for k, v in doc.items() if not isinstance(v, dict))
            if stray:
                raise ConfigError(
                    f"{path}: key(s) {', '.join(stray)} sit outside [engine]; move them into it"
                )
        return cls.from_dict(table, source=f"{path} [engine]")


def load_provenance(path: str | Path) -> dict[str, Any]:
    """Every table except `[engine]` of a config TOML (empty when there is none)."""
    doc = read_toml(Path(path), "config file", ConfigError)
    return {k: v for k, v in doc.items() if k != "engine" and isinstance(v, dict)}
