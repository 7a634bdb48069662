"""Optuna-driven search over streaming-engine knobs.

Public names are re-exported here; each lives in a module that does one job. A name is never
both a function and a submodule: `show` and `export` are modules (autoresearch.show.show,
autoresearch.export.export), so `autoresearch.show` means the same whatever was imported first.

What autoresearch uses of the engine (docs/architecture.md lists the same):
    engine.contract  knob names/types/ranges (KNOBS), metric names and directions (METRICS),
                     families (SYNTH_FAMILIES) and presets (SYNTH_PRESETS); MLX-free
    engine.config    EngineConfig: a trial's knobs, an exported tuned file
    engine.errors    EngineError and its subclasses (ConfigError, StoreExists, ...)
    engine.api       read_toml; add_command, dispatch, Handler (CLI plumbing); store_info ->
                     StoreInfo; pack_store; synthesize_model; default_suite_path; machine_id;
                     TraceSimulator (trace screening)
and the `python -m engine probe` command line with its metrics JSON (autoresearch/trial.py).
Nothing else: tests/autoresearch/test_package.py holds autoresearch/ to this list.
"""

from __future__ import annotations

from pathlib import Path as _Path

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
    "Limits": "autoresearch.export",
    "NoTrialFits": "autoresearch.export",
    "finish_demo": "autoresearch.demo_finish",
    "load_results": "autoresearch.results",
    "write_report": "autoresearch.report",
}


def __getattr__(name: str) -> object:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    # A submodule read before anything imported it is that module, as it is afterwards.
    if not name.startswith("_") and (_Path(__file__).parent / f"{name}.py").is_file():
        return importlib.import_module(f"autoresearch.{name}")
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
    "finish_demo",
    "load_results",
    "load_space",
    "load_study_file",
    "write_report",
]
