"""`autoresearch confirm`: the front re-measured beside the baseline, progress and warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ar_helpers import build
from optuna.trial import TrialState

from autoresearch.cli import main
from autoresearch.confirm import confirm_study, spread_warnings
from autoresearch.export import export
from autoresearch.results import load_results
from autoresearch.study_file import StudySpec


def test_confirm_changes_medians_keeps_samples(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """The stand-in measures decode_tok_s = 10 x io_threads: trials 1, 2, 3 run 8, 2 and 4
    threads, the baseline 4, so the re-measured medians and ratios are known by hand."""
    spec = build(tmp_path / "s", tiny[1], kind="scaled")
    threads = {1: 8, 2: 2, 3: 4}
    before = {
        t.number: t.user_attrs["samples"]
        for t in load_results(spec).study.trials
        if t.state == TrialState.COMPLETE
    }
    summary = confirm_study(spec, repeats=2, note=lambda _s: None)
    assert {1, 2, 3} <= set(summary.trials) and summary.failures == []
    res = load_results(spec)
    for n, k in threads.items():
        rec = res.study.user_attrs[f"confirmed_trial_{n}"]
        assert rec["metrics"]["decode_tok_s"] == 10.0 * k != rec["before"]["decode_tok_s"]
        assert rec["samples"]["decode_tok_s"] == [10.0 * k] * 2 and rec["repeats"] == 2
        assert rec["ratio_to_baseline"]["decode_tok_s"] == pytest.approx(k / 4)
        assert res.by_number(n).ratio["decode_tok_s"] == pytest.approx(k / 4)
        assert res.study.trials[n].user_attrs["samples"] == before[n]  # originals kept
        assert res.by_number(n).note == "confirmed: 2 re-measurements"
    base = res.study.user_attrs["confirmed_trial_0"]
    assert base["samples"]["decode_tok_s"] == [40.0] * (2 * len(summary.trials))  # B before each T
    f = export(res, tmp_path / "t.toml", pick="fastest")
    prov = tomllib.loads((tmp_path / "t.toml").read_text())["provenance"]
    assert prov["measurement"].startswith("confirmed") and f.number == 1
    assert prov["metrics"]["decode_tok_s"] == {
        "median": 80.0,
        "spread": 0.0,
        "ratio_to_baseline": pytest.approx(2.0),
    }


def test_confirm_shows_n_of_m_and_an_eta(spec: StudySpec, capsys: Any) -> None:
    notes: list[str] = []
    summary = confirm_study(spec, repeats=2, note=notes.append)
    runs = [n for n in notes if n.startswith("run ")]
    m = summary.planned
    assert m == 2 * 2 * len(summary.trials) and len(runs) == m == summary.runs
    assert runs[0].startswith(f"run 1 of {m}: repeat 1/2 baseline trial 0") and ", ETA " in runs[0]
    assert runs[-1].startswith(f"run {m} of {m}: ") and "ETA" not in runs[-1]
    assert main(["confirm", str(spec.path), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^runs: (\d+) of \1$", out, re.M)
    assert "confirmed trial 1: decode_tok_s 150 tok/s -> 1 tok/s (x1 baseline), 1 runs" in out


def test_confirm_warns_when_its_spread_is_well_above_the_noise_floor(spec: StudySpec) -> None:
    floor = {"decode_tok_s": {"spread": 0.07, "relative": 0.007}}
    noisy = {0: {"metrics": {"decode_tok_s": 10.0}, "spread": {"decode_tok_s": 3.0}, "repeats": 2}}
    quiet = {0: {"metrics": {"decode_tok_s": 10.0}, "spread": {"decode_tok_s": 0.1}, "repeats": 2}}
    (w,) = spread_warnings(spec, floor, noisy, baseline=0)
    assert w.startswith("baseline trial 0: decode_tok_s spread 30.0% over 2 re-measurements")
    assert "noise floor 0.7%" in w
    assert spread_warnings(spec, floor, quiet, baseline=0) == []
    assert spread_warnings(spec, {}, noisy, baseline=0) == []  # no floor: nothing to compare
