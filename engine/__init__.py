"""Streaming Mixture-of-Experts inference engine: experts live on disk, every knob is measurable."""

from __future__ import annotations

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

__version__ = "0.1.0"

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
