"""Where a machine keeps what it builds for studies: synthesized models, packed stores, locks.

Order: `$AUTORESEARCH_CACHE_DIR`, then the study's `study.cache_dir` (relative to the study
file), then `$XDG_CACHE_HOME/moe-autoresearch` (default `~/.cache/moe-autoresearch`). The
environment wins so one machine of a fleet can put its cache on its own fast disk without
editing the shared study file. Every worker on one machine should see the same cache dir: the
probe lock lives there (autoresearch/hostlock.py).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "AUTORESEARCH_CACHE_DIR"


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "moe-autoresearch"


def resolve_cache_dir(from_study: str | None, study_dir: Path) -> Path:
    """The cache dir for a study file in `study_dir` (not created here: read-only commands)."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser().resolve()
    if from_study:
        return (study_dir / Path(from_study).expanduser()).resolve()
    return default_cache_dir()
