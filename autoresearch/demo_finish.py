"""The end of `make demo`: the balanced pick confirmed against the baseline (interleaved), the
Pareto table, a tuned.toml, the report, and the confirmed tuned / default decode ratio."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autoresearch import format as fmt
from autoresearch.confirm import confirm_study
from autoresearch.export import Limits, baseline_warning, export, pick_trial, run_line
from autoresearch.report import write_report
from autoresearch.results import Figures, Results, load_results
from autoresearch.show import pareto_table
from autoresearch.study_file import load_study_file
from autoresearch.term import console as make_console

CONFIRM_REPEATS = 2  # interleaved pick/baseline pairs: enough to see a 1.2x, cheap enough


def finish_demo(
    study_file: Path, out_dir: Path, console: Console | None = None, repeats: int = CONFIRM_REPEATS
) -> dict[str, Path]:
    """Confirm the balanced pick, print the front, write out_dir/tuned.toml and
    out_dir/report.html, print the confirmed ratio; return the files' paths."""
    console = console or make_console()  # wide when piped: rich would fold cells at 80
    spec = load_study_file(study_file)
    res = load_results(spec)
    first = pick_trial(res, "balanced", Limits())
    if not first.is_baseline and not first.confirmed:
        # A single in-loop run is selection-biased: re-measure the pick beside the baseline.
        def note(line: str) -> None:
            console.print(line, highlight=False, markup=False)

        confirm_study(spec, repeats=repeats, trials=[first.number], note=note)
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
    lines.append(ratio_line(res, picked))
    warn = baseline_warning(res, picked, "balanced")
    if warn:
        lines.append(f"warning: {warn}")
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    return {"tuned": tuned, "report": report}


def ratio_line(res: Results, picked: Figures) -> str:
    """The demo's last word: confirmed tuned / default decode speed at the study's budget."""
    rec = picked.confirmed or {}
    ratio = (rec.get("ratio_to_baseline") or {}).get("decode_tok_s")
    budget = picked.trial.user_attrs.get("memory_budget_bytes")  # the budget the probe held to
    at = f" at a memory budget of {fmt.nbytes(budget)}" if budget else ""
    if picked.is_baseline:
        return f"tuned / default decode: 1.00x{at} (the pick is the untuned baseline)"
    if ratio is None:
        return f"tuned / default decode: not confirmed{at} (run `autoresearch confirm`)"
    return (
        f"tuned / default decode: {ratio:.2f}x{at} (confirmed: {rec.get('repeats')} runs each, "
        "interleaved with the baseline)"
    )
