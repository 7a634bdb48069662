"""`autoresearch demo` (what `make demo` runs): a study, then the front, tuned.toml, report."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_autoresearch_helpers import tiny, write_study  # noqa: F401 - fixture

from autoresearch.cli import main
from engine.config import EngineConfig, load_provenance


def test_demo_command_runs_a_study_and_writes_its_outputs(
    tmp_path: Path,
    tiny: tuple[Path, Path],  # noqa: F811 - fixture
    capsys: pytest.CaptureFixture,
) -> None:
    study = write_study(tmp_path / "s", store=tiny[1], kind=None)
    out = tmp_path / "out"
    assert main(["demo", str(study), "--out", str(out), "--n-trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert "tuned:" in printed and "report:" in printed
    tuned = out / "tuned.toml"
    EngineConfig.from_toml(tuned)  # the engine accepts it as is
    assert load_provenance(tuned)["provenance"]["study"] == "study"
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
