"""The live display of a running study."""

from __future__ import annotations

import io

import pytest
from ar_helpers import MARKUP, fail_with_markup
from rich.console import Console

from autoresearch.display import Display
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec


@pytest.mark.parametrize("terminal", [True, False])
def test_live_display_prints_brackets_literally(spec: StudySpec, terminal: bool) -> None:
    fail_with_markup(spec)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200)
    study = open_study(spec)
    number = len(study.trials) - 1
    with Display(spec, n_trials=3, timeout_s=None, console=console) as d:
        d.start_trial(
            number, {"io_mode": "[bold]x", "cache_fraction": 0.1514475154617042}, baseline=False
        )
        d.phase("probing")
        d.note("pack said [/red] oops")
        d.trial_done(study, number, 1)
    out = buf.getvalue()
    assert "[/red] oops" in out  # a note, literally (the live panel keeps the last 3)
    assert "next:" in out and f"autoresearch confirm {spec.path}" in out
    if not terminal:
        assert f"failed: {number} {MARKUP}" in out and "phase: probing" in out
        assert f"trial: {number} io_mode=[bold]x cache_fraction=0.151\n" in out


def test_live_display_shows_phase_elapsed_and_best_vs_baseline(spec: StudySpec) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    study = open_study(spec)
    d = Display(spec, n_trials=3, timeout_s=None, console=console)
    d.start_trial(7, {"io_threads": 4}, baseline=False)
    d.phase("packing")
    d.update_front(study)
    console.print(d)
    out = buf.getvalue()
    assert "packing (" in out and "in this trial)" in out
    assert "best so far decode_tok_s: 150 ± 3 tok/s trial 1 (x1.5 baseline 100 tok/s)" in out
    assert "memory_bytes" in out and "MiB" in out and "e+08" not in out
