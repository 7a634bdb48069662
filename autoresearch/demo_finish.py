"""The end of `make demo`: the Pareto table, a tuned.toml (balanced pick) and the report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autoresearch.export import baseline_warning, export, run_line
from autoresearch.report import write_report
from autoresearch.results import load_results
from autoresearch.show import pareto_table
from autoresearch.study_file import load_study_file
from autoresearch.term import console as make_console


def finish_demo(study_file: Path, out_dir: Path, console: Console | None = None) -> dict[str, Path]:
    """Print the front, write out_dir/tuned.toml and out_dir/report.html; return their paths."""
    console = console or make_console()  # wide when piped: rich would fold cells at 80
    spec = load_study_file(study_file)
    res = load_results(spec)
    console.print(pareto_table(res))
    out_dir.mkdir(parents=True, exist_ok=True)
    tuned = out_dir / "tuned.toml"
    picked = export(res, tuned, pick="balanced")
    report = write_report(spec, out_dir / "report.html")
    lines = [
        f"tuned: {tuned} (trial {picked.label}, balanced pick; {picked.note})",
        f"store: {picked.trial.user_attrs.get('store', '?')}",
        f"report: {report}",
        f"run it: {run_line(picked, tuned)}",
    ]
    warn = baseline_warning(res, picked, "balanced")
    if warn:
        lines.append(f"warning: {warn}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    return {"tuned": tuned, "report": report}
