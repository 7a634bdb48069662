"""`autoresearch show`: the front, the best per objective, failures, importances."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from ar_helpers import build
from rich.console import Console

from autoresearch import format as fmt
from autoresearch.cli import main
from autoresearch.show import show
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec
from engine.config import EngineConfig


def _text(spec: StudySpec) -> str:
    console = Console(record=True, width=220)
    show(spec, console)
    return console.export_text()


def test_show_with_failures(spec: StudySpec) -> None:
    text = _text(spec)
    assert "Pareto front" in text and "unconfirmed: single measurement" in text
    # Failures grouped by kind (the reason's text before ':'): count and trial numbers.
    cells = [ln.split("│")[1:4] for ln in text.splitlines() if ln.startswith(("│ crash", "│ hang"))]
    assert [[c.strip() for c in row] for row in cells] == [
        ["crash", "2", "6, 7"],
        ["hang", "1", "8"],
    ]
    assert "knob importance for decode_tok_s" in text  # Optuna's evaluator ran
    assert "noise floor" in text and "2.0%" in text
    assert "500" not in text.split("best trial per objective")[1]  # infeasible never best


def test_show_with_one_completed_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=1)
    text = _text(spec)
    assert "0 (baseline)" in text and "need >= 3 completed searched trials" in text
    assert "failures: none" in text


def test_baseline_knob_cell_shows_its_cache_size(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=1)  # only the baseline: it is the front and the best
    console = Console(record=True, width=250)
    show(spec, console)
    text = console.export_text()
    row = next(ln for ln in text.splitlines() if "0 (baseline)" in ln)
    cache = fmt.nbytes(EngineConfig().cache_bytes)
    assert f"cache_bytes={cache}" in row
    assert f"note: the baseline (engine default with a {cache} expert cache)" not in text  # alone


def test_show_says_why_the_baseline_wins(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=3)  # baseline 100 tok/s; trials 1 (150) and 2 (80)
    study = open_study(spec)
    study.add_trial(optuna.trial.create_trial(values=[50.0, 500e6, 0.0]))
    console = Console(record=True, width=250)
    show(spec, console)
    text = console.export_text()
    assert "note: the baseline" not in text  # trial 1 is faster, trial 2 smaller
    spec2 = build(tmp_path / "b", tiny[1], n=1)
    study2 = open_study(spec2)
    attrs = {**study.trials[2].user_attrs, "decode_tok_s": 50.0, "memory_bytes": 300e6}
    study2.add_trial(
        optuna.trial.create_trial(
            values=[50.0, 300e6, 0.0], user_attrs=attrs, constraints={"memory_bytes": -1.0}
        )
    )
    console = Console(record=True, width=250)
    show(spec2, console)
    text = " ".join(console.export_text().split())
    cache = fmt.nbytes(EngineConfig().cache_bytes)
    assert (
        f"note: the baseline (engine default with a {cache} expert cache) is still the best "
        "on decode_tok_s, memory_bytes;" in text
    )


def test_show_piped_is_wide_not_folded_at_80_columns(spec: StudySpec, capsys: Any) -> None:
    assert main(["show", str(spec.path)]) == 0
    out = capsys.readouterr().out
    assert max(len(ln) for ln in out.splitlines()) > 120
    row = next(ln for ln in out.splitlines() if ln.startswith("│ 3 "))
    assert "io=direct" in row and "threads=4" in row  # the knobs cell on one line


def test_importance_caveat_under_20_trials_and_quality_knobs(spec: StudySpec) -> None:
    console = Console(record=True, width=250)
    show(spec, console)
    text = console.export_text()
    assert "rough: only 5 searched trials" in " ".join(text.split())
    # cache/io knobs never change outputs: no importance is invented for kl_mean.
    assert "knob importance for kl_mean" not in text and "measurement noise" in text
