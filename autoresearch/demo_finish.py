"""The end of `make demo`: the Pareto table, a tuned.toml (balanced pick) and the report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autoresearch.export import export
from autoresearch.report import write_report
from autoresearch.results import load_results
from autoresearch.show import pareto_table
from autoresearch.study_file import load_study_file


def finish_demo(study_file: Path, out_dir: Path, console: Console | None = None) -> dict[str, Path]:
    """Print the front, write out_dir/tuned.toml and out_dir/report.html; return their paths."""
    # Not a terminal (a log, CI): rich would assume 80 columns and fold every cell.
    console = console or Console(width=None if Console().is_terminal else 160)
    spec = load_study_file(study_file)
    res = load_results(spec)
    console.print(pareto_table(res))
    out_dir.mkdir(parents=True, exist_ok=True)
    tuned = out_dir / "tuned.toml"
    picked = export(res, tuned, pick="balanced")
    report = write_report(spec, out_dir / "report.html")
    store = picked.trial.user_attrs.get("store", "STORE")
    console.print(f"tuned: {tuned} (trial {picked.number}, balanced pick; {picked.note})",
                  highlight=False, soft_wrap=True)  # fmt: skip
    console.print(f"report: {report}", highlight=False, soft_wrap=True)
    console.print(f"run it: python -m engine run {store} --config {tuned} --prompt-ids 1,2,3",
                  highlight=False, soft_wrap=True)  # fmt: skip
    return {"tuned": tuned, "report": report}
