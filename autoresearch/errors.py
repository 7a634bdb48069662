"""One root exception for autoresearch, with specific subclasses.

Messages name the file and key involved and say what to do next; the CLI prints them on one
line without a traceback and exits 1.
"""

from __future__ import annotations


class AutoresearchError(Exception):
    """Root of every error autoresearch raises on purpose."""


class SpaceError(AutoresearchError, ValueError):
    """A search-space TOML names an unknown knob, a bad range or a bad condition."""


class StudyFileError(AutoresearchError, ValueError):
    """A study TOML is missing, malformed, or names an unknown metric, model or store."""


class StorageError(AutoresearchError):
    """The study's Optuna storage URL cannot be opened."""


class IncompatibleStudy(AutoresearchError):
    """The study file changed in a way that makes the stored trials incomparable."""


class VariantError(AutoresearchError):
    """A store variant (bits, group size, layout) could not be built or opened."""


class OtherMachine(AutoresearchError):
    """A worker on another machine joined a study that is measured on one machine only."""
