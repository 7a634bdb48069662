"""Fixtures of the autoresearch tests (the session-wide model and store fixtures are in
tests/conftest.py; helpers that are not fixtures are in ar_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ar_helpers import build, tiny_model_and_store

from autoresearch.study_file import StudySpec


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint dir, packed store) of a tiny qwen3_moe model, built once per session."""
    return tiny_model_and_store(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def spec(tmp_path: Path, tiny: tuple[Path, Path]) -> StudySpec:
    """A stored study of hand-made trials (ar_helpers.TRIALS) with a stand-in probe."""
    return build(tmp_path / "s", tiny[1])
