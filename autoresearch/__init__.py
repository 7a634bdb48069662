"""Optuna-driven search over streaming-engine knobs.

Public names are re-exported here; each lives in a module that does one job.
"""

from __future__ import annotations

from autoresearch.errors import (
    AutoresearchError,
    IncompatibleStudy,
    SpaceError,
    StorageError,
    StudyFileError,
    VariantError,
)
from autoresearch.space import Space, load_space
from autoresearch.study_file import StudySpec, load_study_file

__all__ = [
    "AutoresearchError",
    "IncompatibleStudy",
    "Space",
    "SpaceError",
    "StorageError",
    "StudyFileError",
    "StudySpec",
    "VariantError",
    "load_space",
    "load_study_file",
]
