"""Streaming Mixture-of-Experts inference engine: experts live on disk, every knob is measurable."""

from __future__ import annotations

from engine._version import __version__
from engine.config import EngineConfig
from engine.errors import (
    CheckpointError,
    ConfigError,
    EngineError,
    ExpertCorrupt,
    MemoryBudgetError,
    ProbeError,
    ReadError,
    StoreCorrupt,
    StoreError,
    StoreExists,
    UnsupportedModel,
)

# Lazy: each pulls in MLX / mlx-lm, which `--help` and config validation do not need.
# (pack, verify, probe and simulate share their submodule's name: import them from there.)
_LAZY = {
    "Engine": "engine.runtime",
    "Store": "engine.store",
    "Trace": "engine.measure.trace",
    "get_reference": "engine.measure.reference",
    "load_suite": "engine.suite",
    "synthesize": "engine.synth.hf",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "Engine",
    "EngineConfig",
    "EngineError",
    "ExpertCorrupt",
    "MemoryBudgetError",
    "ProbeError",
    "ReadError",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreExists",
    "Trace",
    "UnsupportedModel",
    "__version__",
    "get_reference",
    "load_suite",
    "synthesize",
]
