"""`autoresearch` / `python -m autoresearch`: study commands (run, status, confirm, ...).

Each subcommand's help is its handler's docstring; handlers parse, call the library and print.
Errors raised on purpose print one line and exit 1.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from autoresearch.errors import AutoresearchError
from engine.api import Handler, add_command, dispatch
from engine.errors import EngineError


def cmd_run(args: argparse.Namespace) -> int:
    """Create or resume a study and run trials: each trial probes the engine in a child process.

    Trial 0 is the engine's default config, repeated to measure the study's noise floor. Store
    variants (bits, group size, layout) are packed once and reused. A trial whose probe crashes,
    hangs past study.trial_timeout_s or prints garbage is recorded FAIL with its reason.
    Ctrl-C kills the running probe, records it FAIL "interrupted" and re-enqueues it; after a
    kill -9, rerunning the same command marks the abandoned trial FAIL and retries it.
    --timeout is checked between trials: a running trial is bounded by study.trial_timeout_s.
    """
    return _run_trials(args)


def cmd_worker(args: argparse.Namespace) -> int:
    """Join a study as one more worker, from this machine or any other with the same storage.

    The same loop as `run`, meant for many at once: on a shared storage (study.storage or
    --storage: postgresql://..., mysql://..., journal:///shared/x.log) every worker takes the
    next trial, builds stores and models in this machine's cache dir, and measures under this
    machine's probe lock, so two workers on one machine never probe at the same time. A worker
    whose heartbeat stops (kill -9, power loss) has its trial retried by another after
    study.grace_period. Unless the study says machines = "fleet", a worker on a machine other
    than the study's is refused. Without --n-trials/--timeout it runs until stopped (Ctrl-C or
    SIGTERM re-enqueue its running trial).
    """
    return _run_trials(args, until_stopped=args.n_trials is None and args.timeout is None)


def _run_trials(args: argparse.Namespace, until_stopped: bool = False) -> int:
    from autoresearch.loop import run_study
    from autoresearch.study_file import load_study_file

    spec = load_study_file(args.study, storage=args.storage)
    # docker stop, systemd, `timeout`: like Ctrl-C, the probe dies and the trial is re-enqueued.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run_study(
            spec, n_trials=args.n_trials, timeout_s=args.timeout, until_stopped=until_stopped
        )
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    print(f"completed: {summary.completed}")
    print(f"failed: {summary.failed}")
    if summary.screened:
        print(f"screened_out: {summary.screened}")
    if summary.duplicates:
        print(f"duplicates_skipped: {summary.duplicates}")
    if summary.interrupted:
        print("interrupted: yes (rerun the same command to resume)")
        return 130
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _count(text: str) -> int:
    """--n-trials: a whole number >= 1 (argparse prints the message and exits 2)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return v


def _seconds(text: str) -> float:
    """--timeout: a finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return v


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo study, then print its Pareto front and write tuned.toml and report.html.

    This is `make demo`, the quick start's main job. Rerunning resumes the study and adds
    study.n_trials more trials (or --n-trials).
    """
    from autoresearch.demo_finish import finish_demo
    from autoresearch.loop import run_study
    from autoresearch.study_file import load_study_file

    spec = load_study_file(args.study)
    summary = run_study(spec, n_trials=args.n_trials)
    if summary.interrupted:
        print("interrupted: rerun `make demo` to resume the study")
        return 130
    finish_demo(Path(args.study), Path(args.out))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show a study's trials done/failed/running, the best value per objective and noise floor.

    The figures are show's (confirmed where `confirm` re-measured them), in human units.
    """
    from autoresearch.status import status_lines
    from autoresearch.study_file import load_study_file

    for line in status_lines(load_study_file(args.study, storage=args.storage)):
        print(line)
    return 0


def cmd_confirm(args: argparse.Namespace) -> int:
    """Re-measure the Pareto front (and trials within the noise floor of it) K more times.

    Each re-measurement runs in the same child-process probe runner as `run`, interleaved with
    the baseline (B, T1, B, T2, ...) so drift hits both; medians, spreads, raw samples and
    paired ratios to the baseline go to the study user attr confirmed_trial_<N>. show, export
    and report then use these figures. Original trial attrs (and samples) are left as they were.
    Prints "run N of M" with an ETA as it goes, and warns when a re-measured spread is well above
    the study's noise floor (a busy machine). The confirmed figures also go to the study user
    attr confirmed_table and optuna-dashboard's study note.
    """
    from autoresearch.confirm import confirm_study, summary_lines
    from autoresearch.study_file import load_study_file

    spec = load_study_file(args.study)
    summary = confirm_study(spec, repeats=args.repeats)
    for line in summary_lines(spec, summary):
        print(line)
    for w in summary.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a picked trial's EngineConfig TOML for `python -m engine run|probe --config`.

    --pick fastest (max decode_tok_s), smallest (min memory_bytes) or balanced (closest to
    the utopia point, objectives scaled to [0, 1]; kl_mean gaps below 0.01 and speed/memory
    gaps within the noise floor or spread count as ties); --trial N exports that trial. Limits
    (--max-memory, --max-kl) filter first; if no trial fits, the command fails naming the
    closest one. Confirmed figures are used where present. [provenance] records the study,
    trial, machine, model and store fingerprints, engine version and metrics with spread and
    ratio to the baseline; `engine run` refuses the file on another store without --force.
    --format json writes the same content as JSON (for other tools; engine reads TOML).
    Prints the store, the trial, whether it is the baseline (with a warning: that is the
    untuned default) and a ready-to-run `engine run` line. -o may be a symlink (written
    through); a directory or special file (/dev/null) is refused.
    """
    from autoresearch import format as fmt
    from autoresearch.export import Limits, baseline_warning, export, run_line
    from autoresearch.results import load_results
    from autoresearch.study_file import load_study_file

    limits = Limits(max_memory=args.max_memory, max_kl=args.max_kl)  # refuses nan/inf first
    res = load_results(load_study_file(args.study))
    out = Path(args.output or f"tuned.{args.format}")
    f = export(
        res,
        out,
        pick=args.pick,
        limits=limits,
        trial=args.trial,
        fmt=args.format,
        store=args.store,
        force=args.force,
    )
    print(f"exported: {out}")
    print(f"store: {args.store or f.trial.user_attrs.get('store', '?')}")
    print(f"trial: {f.number} ({args.pick if args.trial is None else 'given'})")
    print(f"baseline: {'yes (the untuned engine default)' if f.is_baseline else 'no'}")
    print(f"measurement: {f.note}")
    for m, _ in res.objectives:
        ratio = f.ratio.get(m)
        vs = f" ({fmt.ratio(ratio)} baseline)" if ratio is not None else ""
        print(f"{m}: {f.fmt(m)}{vs}")
    if args.format == "toml":
        print(f"run it: {run_line(f, out)}")
    warn = baseline_warning(res, f, args.pick if args.trial is None else f"--trial {f.number}")
    if warn:
        print(f"warning: {warn}", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Show what a study found: Pareto front, best per objective, importances, failures.

    Rich tables: the Pareto front with each metric's spread (confirmed figures where present),
    the best trial per objective, knob importances per objective (Optuna's fANOVA; marked rough
    under 20 trials), failures grouped by reason, and the noise floor. Piped, tables are wide.
    """
    from autoresearch.show import show
    from autoresearch.study_file import load_study_file

    show(load_study_file(args.study))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write one self-contained HTML report (plotly.js inline: works offline)."""
    from autoresearch.report import write_report
    from autoresearch.study_file import load_study_file

    print(f"report: {write_report(load_study_file(args.study), Path(args.output))}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Launch optuna-dashboard on the study's storage, bound to 127.0.0.1.

    Objectives carry their metric names; the study's note says which figures are confirmed.
    Ctrl-C, SIGTERM or the death of this command stops the dashboard too.
    Needs the optional dependency: pip install optuna-dashboard (or the `dashboard` extra).
    `optuna-dashboard sqlite:///studies/<name>.db` works directly as well.
    """
    from autoresearch.dashboard import run_dashboard
    from autoresearch.study_file import load_study_file

    return run_dashboard(load_study_file(args.study), port=args.port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Handler) -> argparse.ArgumentParser:
        return add_command(sub, name, fn)

    for name, fn in (("run", cmd_run), ("worker", cmd_worker)):
        sp = add(name, fn)
        sp.add_argument("study", help="study TOML (e.g. studies/demo.toml)")
        sp.add_argument("--n-trials", type=_count, help="trials to run now (>= 1)")
        sp.add_argument("--timeout", type=_seconds, help="seconds to run now (> 0)")
        _url_option(sp)

    sp = add("demo", cmd_demo)
    sp.add_argument("study", nargs="?", default="studies/demo.toml", help="study TOML")
    sp.add_argument("--out", default="demo_out", help="where tuned.toml and report.html go")
    sp.add_argument("--n-trials", type=int, default=None, help="trials to add this run")

    sp = add("status", cmd_status)
    sp.add_argument("study", help="study TOML")
    _url_option(sp)

    sp = add("confirm", cmd_confirm)
    sp.add_argument("study", help="study TOML")
    sp.add_argument("--repeats", type=int, default=3, help="re-measurements per trial (3)")

    sp = add("export", cmd_export)
    sp.add_argument("study", help="study TOML")
    sp.add_argument("--pick", choices=("fastest", "smallest", "balanced"), default="balanced")
    sp.add_argument("--max-memory", type=float, metavar="BYTES", help="memory_bytes limit")
    sp.add_argument("--max-kl", type=float, metavar="X", help="kl_mean limit")
    sp.add_argument("--trial", type=int, metavar="N", help="export trial N instead of a pick")
    sp.add_argument("-o", "--output", help="output file (default: tuned.toml / tuned.json)")
    sp.add_argument("--format", choices=("toml", "json"), default="toml")
    sp.add_argument("--store", help="the store you will run it on: checked against the trial's")
    sp.add_argument("--force", action="store_true", help="export despite a store mismatch")

    sp = add("show", cmd_show)
    sp.add_argument("study", help="study TOML")

    sp = add("report", cmd_report)
    sp.add_argument("study", help="study TOML")
    sp.add_argument("-o", "--output", default="report.html", help="HTML file (report.html)")

    sp = add("dashboard", cmd_dashboard)
    sp.add_argument("study", help="study TOML")
    sp.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (8080)")
    return p


def _url_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--storage",
        metavar="URL",
        help="use this storage instead of study.storage (sqlite:///x.db, postgresql://user@host"
        "/db, journal:///shared/x.log; ${VAR} is read from the environment)",
    )


def main(argv: list[str] | None = None) -> int:
    from autoresearch.term import quiet_on_closed_pipe

    args = _parser().parse_args(argv)
    # `autoresearch status | head`: a closed pipe ends the command quietly, no traceback.
    return quiet_on_closed_pipe(lambda: dispatch(args, (AutoresearchError, EngineError)))


if __name__ == "__main__":
    sys.exit(main())
