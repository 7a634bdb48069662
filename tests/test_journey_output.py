"""What a person reads along the journey: human units everywhere, status == show, wide tables
when piped, no markup parsing of trial text, quiet closed pipes, safe output files, export's
summary and its balanced pick."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console
from test_autoresearch_front import build
from test_autoresearch_helpers import REPO, tiny

from autoresearch import format as fmt
from autoresearch.cli import main
from autoresearch.confirm import confirm_study
from autoresearch.display import Display
from autoresearch.export import KL_MEANINGFUL, Limits, balanced, export
from autoresearch.outfile import OutputRefused, write_text
from autoresearch.results import Figures, load_results
from autoresearch.show import show
from autoresearch.status import status_lines
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec
from engine.config import EngineConfig

__all__ = ["tiny"]

MARKUP = "crash: probe exited 1: [/bold] x [engine] y [red]z"


@pytest.fixture
def spec(tmp_path: Path, tiny: tuple[Path, Path]) -> StudySpec:
    return build(tmp_path / "s", tiny[1])


# -- format.py: one module, hand-checkable figures -------------------------------------------


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("memory_bytes", 290226000.0, "276.8 MiB"),
        ("memory_bytes", 1.407e9, "1.31 GiB"),
        ("bytes_read_per_token", 12288, "12.0 KiB"),
        ("page_cache_bytes", 512, "512 B"),
        ("decode_tok_s", 12.3456, "12.3 tok/s"),
        ("decode_tok_s", 1234.5, "1234 tok/s"),
        ("latency_p99_s", 0.01234, "12.3 ms"),
        ("ttft_s", 625.4, "10 min 25 s"),
        ("cache_hit_rate", 0.7123, "71.2%"),
        ("kl_mean", 0.0016123456789, "0.00161"),
        ("tokens", 256.0, "256"),
        ("kl_mean", None, "-"),
    ],
)
def test_every_metric_reads_in_its_unit(metric: str, value: float | None, text: str) -> None:
    assert fmt.metric(metric, value) == text


def test_spread_and_axis_units() -> None:
    assert fmt.metric_pm("decode_tok_s", 12.34, 0.456) == "12.3 ± 0.46 tok/s"
    assert fmt.metric_pm("memory_bytes", 3 * 2**30, 2**20) == "3.00 GiB ± 1.0 MiB"
    assert fmt.metric_pm("kl_mean", 0.25, 0.0) == "0.25"
    assert fmt.axis("memory_bytes", [1.4e9, 2e8]) == (2**30, "memory_bytes (GiB)")
    assert fmt.axis("memory_bytes", [2e8]) == (2**20, "memory_bytes (MiB)")
    assert fmt.axis("latency_p99_s", [0.2]) == (1e-3, "latency_p99_s (ms)")
    assert fmt.ratio(1.23456) == "x1.23" and fmt.seconds(3725) == "1 h 02 min"


# -- status and show: the same figures, in units, confirmed where present --------------------


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
    study2.add_trial(optuna.trial.create_trial(values=[50.0, 300e6, 0.0], user_attrs=attrs,
                                               constraints={"memory_bytes": -1.0}))  # fmt: skip
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


# -- brackets from a child or a user never reach rich as markup ------------------------------


def _fail_with_markup(spec: StudySpec) -> None:
    study = open_study(spec)
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, user_attrs={"fail_reason": MARKUP}))  # fmt: skip


def test_show_and_status_print_brackets_literally(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: Any
) -> None:
    spec = build(tmp_path, tiny[1], failures=False)
    _fail_with_markup(spec)
    assert main(["show", str(spec.path)]) == 0
    out = capsys.readouterr().out
    assert MARKUP in out  # in the failures table, as it was recorded
    assert main(["status", str(spec.path)]) == 0
    assert MARKUP in capsys.readouterr().out


@pytest.mark.parametrize("terminal", [True, False])
def test_live_display_prints_brackets_literally(spec: StudySpec, terminal: bool) -> None:
    _fail_with_markup(spec)
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=200)
    study = open_study(spec)
    number = len(study.trials) - 1
    with Display(spec, n_trials=3, timeout_s=None, console=console) as d:
        d.start_trial(number, {"io_mode": "[bold]x", "cache_fraction": 0.1514475154617042},
                      baseline=False)  # fmt: skip
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


# -- a closed pipe is not a traceback ---------------------------------------------------------


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_closed_pipe_exits_quietly_in_process(
    spec: StudySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["status", str(spec.path)]) == 141


def test_status_piped_into_head_has_no_traceback(spec: StudySpec) -> None:
    study = open_study(spec)
    for i in range(40):  # > 64 KiB of status so the pipe really fills and closes
        reason = f"crash {i}: " + "x" * 4000
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": reason})
        )
    cmd = f"{sys.executable} -m autoresearch status {spec.path} | head -1"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, env=env)
    assert r.stdout == f"study: {spec.name}\n"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr


# -- output files: through symlinks, never over special files ---------------------------------


def test_write_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.toml"
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640  # the replaced file keeps its permissions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.toml", "real.toml"]  # no temp


def test_special_files_and_directories_are_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OutputRefused, match=r"is not a regular file \(a FIFO\)"):
        write_text(fifo, "x")
    with pytest.raises(OutputRefused, match="is a directory"):
        write_text(tmp_path, "x")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "new" / "file.toml")
    write_text(dangling, "made")  # a link to a file that does not exist yet: created there
    assert (tmp_path / "new" / "file.toml").read_text() == "made"


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_to_dev_null_is_refused_and_dev_null_survives(
    spec: StudySpec, capsys: Any, command: str
) -> None:
    assert main([command, str(spec.path), "-o", os.devnull]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: -o /dev/null is not a regular file (a character device)")
    assert len(err.splitlines()) == 1
    assert Path(os.devnull).is_char_device()


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_through_a_symlink(spec: StudySpec, tmp_path: Path, command: str) -> None:
    target = tmp_path / "real.out"
    link = tmp_path / "out.link"
    link.symlink_to(target)
    assert main([command, str(spec.path), "-o", str(link)]) == 0
    assert link.is_symlink() and target.stat().st_size > 100


# -- export: limits, summary, baseline warning, balanced ---------------------------------------


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_export_refuses_a_limit_that_is_not_a_finite_number(
    spec: StudySpec, tmp_path: Path, capsys: Any, bad: str
) -> None:
    out = tmp_path / "t.toml"
    assert main(["export", str(spec.path), "--max-kl", bad, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--max-kl must be a finite number >= 0" in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(Exception, match="--max-memory must be a finite"):
        Limits(max_memory=math.nan)


def test_export_prints_store_trial_baseline_and_a_command(
    spec: StudySpec, tmp_path: Path, capsys: Any, tiny: tuple[Path, Path]
) -> None:
    out = tmp_path / "t.toml"
    assert main(["export", str(spec.path), "--pick", "fastest", "-o", str(out)]) == 0
    o = capsys.readouterr()
    assert f"store: {tiny[1]}" in o.out and "trial: 1 (fastest)" in o.out
    assert "baseline: no" in o.out and "warning" not in o.err
    assert f"run it: python -m engine run {tiny[1]} --config {out} --prompt 'Hello'" in o.out
    assert "memory_bytes: 286.1 MiB ± 976.6 KiB (x1.5 baseline)" in o.out


def test_export_warns_when_the_pick_is_the_baseline(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: Any
) -> None:
    spec = build(tmp_path, tiny[1], n=1)  # only the baseline has run
    assert main(["export", str(spec.path), "--pick", "fastest", "-o", str(tmp_path / "t")]) == 0
    o = capsys.readouterr()
    assert "baseline: yes" in o.out
    assert "warning: trial 0 is the baseline" in o.err and "untuned default" in o.err


def _fig(n: int, decode: float, mem: float, kl: float) -> Figures:
    t = optuna.trial.create_trial(values=[decode, mem, kl])
    t.number = n
    medians = {"decode_tok_s": decode, "memory_bytes": mem, "kl_mean": kl}
    return Figures(trial=t, medians=medians, spread={}, samples={})


def test_balanced_ignores_a_kl_gap_below_the_meaningful_size() -> None:
    objs = [("decode_tok_s", "maximize"), ("memory_bytes", "minimize"), ("kl_mean", "minimize")]
    # Trial 2 beats trial 1 on speed and memory; 1 is "better" only by a 0.001 kl gap.
    figs = [_fig(1, 100.0, 300e6, 0.0006), _fig(2, 105.0, 280e6, 0.0016),
            _fig(3, 60.0, 100e6, 0.0030), _fig(4, 140.0, 600e6, 0.0020)]  # fmt: skip
    assert balanced(figs, objs).number == 1  # kl weighed like the rest: the pick
    assert balanced(figs, objs, {"kl_mean": KL_MEANINGFUL}).number == 2
    # Speed within its spread counts as a tie too: 2 is not faster than 1 by more than noise.
    tol = {"kl_mean": KL_MEANINGFUL, "decode_tok_s": 10.0, "memory_bytes": 30e6}
    assert balanced(figs, objs, tol).number in (2, 3)


def test_export_balanced_uses_the_noise_floor(spec: StudySpec, tmp_path: Path) -> None:
    res = load_results(spec)
    f = export(res, tmp_path / "t.toml", pick="balanced")
    assert f.number == 3
