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

# Lazy: these pull in plotly/rich/optuna visualization, which `run` does not need.
_LAZY = {
    "confirm_study": "autoresearch.confirm",
    "export": "autoresearch.export",
    "Limits": "autoresearch.export",
    "NoTrialFits": "autoresearch.export",
    "finish_demo": "autoresearch.demo_finish",
    "load_results": "autoresearch.results",
    "show": "autoresearch.show",
    "write_report": "autoresearch.report",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoresearch' has no attribute {name!r}")


__all__ = [
    "AutoresearchError",
    "IncompatibleStudy",
    "Limits",
    "NoTrialFits",
    "Space",
    "SpaceError",
    "StorageError",
    "StudyFileError",
    "StudySpec",
    "VariantError",
    "confirm_study",
    "export",
    "finish_demo",
    "load_results",
    "load_space",
    "load_study_file",
    "show",
    "write_report",
]
