"""A study's figures: confirmed where present, one Pareto front for every command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ar_helpers import build
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


def _status_front(spec: StudySpec) -> list[str]:
    line = next(x for x in status_lines(spec) if x.startswith("pareto front: "))
    return line.removeprefix("pareto front: ").split(", ")


def _show_front(spec: StudySpec) -> list[str]:
    console = Console(record=True, width=250)
    show(spec, console)
    lines = console.export_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if "Pareto front" in ln)
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return [ln.split("│")[1].strip() for ln in lines[start:end] if ln.startswith("│ ")]


def test_status_and_show_list_the_same_front_after_confirm_moves_it(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    """Confirm re-measures with the `scaled` stand-in (decode 10 x io_threads tok/s, memory
    1 MB x io_threads, kl_mean 1): the front moves, and status and show move with it."""
    spec = build(tmp_path / "s", tiny[1], kind="scaled")
    assert _status_front(spec) == _show_front(spec) == ["1", "2", "3"]
    confirm_study(spec, repeats=1, note=lambda _s: None)
    after = _status_front(spec)
    # 3 and the baseline now measure the same (4 threads): neither dominates the other; 4
    # (in-loop kl_mean 0, not re-measured) is no longer dominated by the confirmed kl of 1.
    assert after == _show_front(spec) == ["0 (baseline)", "1", "2", "3", "4"]
    assert after == [f.label for f in sorted(load_results(spec).front(), key=lambda f: f.number)]
