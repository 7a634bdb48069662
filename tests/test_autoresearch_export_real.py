"""A real study (`python -m engine probe` trials on the tiny store): confirm re-measures it,
export writes a tuned.toml that `engine probe --config` runs with exactly, and finish_demo
writes the demo's take-home files."""

from __future__ import annotations

import json
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from rich.console import Console
from test_autoresearch_helpers import tiny, write_study

from autoresearch.cli import main
from autoresearch.demo_finish import finish_demo
from autoresearch.study_file import load_study_file
from engine.cli import main as engine_main
from engine.config import EngineConfig

__all__ = ["tiny"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]) -> Path:
    d = tmp_path_factory.mktemp("real")
    p = write_study(d, store=tiny[1], kind=None, extra_study="cold = false")
    p.write_text(p.read_text().replace("baseline_repeats = 3", "baseline_repeats = 2"))
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    return p


def _study(p: Path) -> optuna.Study:
    spec = load_study_file(p)
    return optuna.load_study(study_name=spec.name, storage=spec.storage)


def test_confirm_real_front(real_study: Path, capsys: Any) -> None:
    before = {t.number: dict(t.user_attrs) for t in _study(real_study).trials}
    assert main(["confirm", str(real_study), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "confirmed trial 0:" in out
    study = _study(real_study)
    recs = {k: v for k, v in study.user_attrs.items() if k.startswith("confirmed_trial_")}
    assert len(recs) >= 2, out  # the baseline and at least one front trial
    for key, rec in recs.items():
        n = int(key.rsplit("_", 1)[1])
        assert rec["failures"] == []
        assert all(len(v) >= 1 for v in rec["samples"].values())
        # Timing medians are re-measured (a fresh process never lands on the same float).
        assert rec["metrics"]["decode_tok_s"] != rec["before"]["decode_tok_s"]
        assert study.trials[n].user_attrs == before[n]  # the loop's record is untouched


def test_export_then_engine_probe_runs_that_config(
    real_study: Path, tmp_path: Path, capsys: Any
) -> None:
    tuned = tmp_path / "tuned.toml"
    assert main(["export", str(real_study), "--pick", "balanced", "-o", str(tuned)]) == 0
    prov = tomllib.loads(tuned.read_text())["provenance"]
    trial = _study(real_study).trials[prov["trial"]]
    assert EngineConfig.from_toml(tuned).to_dict() == trial.user_attrs["config"]
    capsys.readouterr()
    store = prov["store"]
    argv = ["probe", store, "--config", str(tuned), "--no-quality", "--json", "--warm"]
    assert engine_main(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["config"] == trial.user_attrs["config"]  # exactly the exported config
    assert metrics["store_fingerprint"] == prov["store_fingerprint"]


def test_finish_demo_writes_tuned_and_report(real_study: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    paths = finish_demo(real_study, tmp_path / "out", console=console)
    assert paths["tuned"].is_file() and paths["report"].is_file()
    EngineConfig.from_toml(paths["tuned"])  # engine reads it
    parser = HTMLParser()
    parser.feed(paths["report"].read_text())
    parser.close()
    text = console.export_text()
    assert "Pareto front" in text and str(paths["report"]) in text
