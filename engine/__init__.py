"""Streaming Mixture-of-Experts inference engine: experts live on disk, every knob is measurable."""

from __future__ import annotations

from engine._version import __version__
from engine.config import EngineConfig
from engine.errors import (
    CheckpointError,
    ConfigError,
    EngineError,
    MemoryBudgetError,
    ProbeError,
    ReadError,
    StoreCorrupt,
    StoreError,
    StoreExists,
    UnsupportedModel,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "EngineConfig",
    "EngineError",
    "MemoryBudgetError",
    "ProbeError",
    "ReadError",
    "StoreCorrupt",
    "StoreError",
    "StoreExists",
    "UnsupportedModel",
    "__version__",
]
