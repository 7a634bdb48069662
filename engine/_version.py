"""The engine version, in one place (results and exported configs record it)."""

__version__ = "0.1.0"
