"""A study's figures: confirmed where present, one Pareto front for every command."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from autoresearch.confirm import confirm_study
from autoresearch.results import load_results
from autoresearch.show import show
from autoresearch.status import status_lines
from autoresearch.study_file import StudySpec


def test_status_and_show_agree_on_confirmed_figures_in_human_units(
    spec: StudySpec, capsys: Any
) -> None:
    before = "\n".join(status_lines(spec))
    assert "e+0" not in before and "MiB" in before and "tok/s" in before
    assert "best decode_tok_s: 150 ± 3 tok/s (trial 1, maximize, x1.5 baseline; unconfirmed)" in (
        before
    )
    confirm_study(spec, repeats=2, note=lambda _s: None)  # the stand-in measures 1.0 everywhere
    lines = status_lines(spec)
    best = next(x for x in lines if x.startswith("best memory_bytes"))
    # Confirmed: 1 byte (the stand-in's figure), not the in-loop 95.4 MiB of trial 2.
    assert best.startswith("best memory_bytes: 1 B (trial ") and best.endswith("; confirmed)")
    res = load_results(spec)
    front = sorted(res.front(), key=lambda f: f.number)
    assert f"pareto front: {', '.join(f.label for f in front)}" in lines
    console = Console(record=True, width=250)
    show(spec, console)
    shown_best = console.export_text().split("best trial per objective")[1]
    row = next(ln for ln in shown_best.splitlines() if "minimize memory_bytes" in ln)
    n = best.split("(trial ")[1].split(",")[0]
    assert f"│ {n} " in row and "│ 1 B " in row and "│ confirmed: " in row
