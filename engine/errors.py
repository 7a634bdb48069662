"""One root exception for the engine, with specific subclasses.

Messages name the file, key, layer or expert involved and say what to do next; the CLI prints
them without a traceback and exits non-zero.
"""

from __future__ import annotations


class EngineError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigError(EngineError, ValueError):
    """An EngineConfig knob (or a config TOML) has a value the engine cannot use."""


class CheckpointError(EngineError):
    """A source checkpoint is missing, inconsistent or in a format we refuse."""


class UnsupportedModel(CheckpointError):
    """config.json names a model_type no streaming family covers."""


class StoreError(EngineError):
    """An expert store is missing or unusable."""


class StoreCorrupt(StoreError):
    """A store's bytes disagree with its manifest (checksum, size, truncation)."""


class ExpertCorrupt(StoreCorrupt):
    """An expert's bytes, as read, do not match the checksum in the manifest."""


class StoreExists(StoreError, FileExistsError):
    """The output directory already exists and --force was not given."""


class ReadError(EngineError, OSError):
    """Reading expert bytes failed or came back short."""


class MemoryBudgetError(EngineError):
    """A run cannot fit the configured memory budget."""


class ProbeError(EngineError):
    """A probe suite file is missing or malformed."""


class NonFiniteError(EngineError):
    """A layer produced NaN or infinite activations (corrupt weights or overflow)."""
