"""Optuna-driven search over streaming-engine knobs."""

from __future__ import annotations

__all__: list[str] = []
