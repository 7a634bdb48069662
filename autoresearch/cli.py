"""`autoresearch` / `python -m autoresearch`: study commands (run, status, confirm, ...).

Each subcommand's help is its handler's docstring; handlers parse, call the library and print.
Errors raised on purpose print one line and exit 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from autoresearch.errors import AutoresearchError
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
    from autoresearch.loop import run_study
    from autoresearch.study_file import load_study_file

    spec = load_study_file(args.study)
    summary = run_study(spec, n_trials=args.n_trials, timeout_s=args.timeout)
    print(f"completed: {summary.completed}")
    print(f"failed: {summary.failed}")
    if summary.screened:
        print(f"screened_out: {summary.screened}")
    if summary.interrupted:
        print("interrupted: yes (rerun the same command to resume)")
        return 130
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Show a study's trials done/failed/running, the best value per objective and noise floor."""
    from autoresearch.status import status_lines
    from autoresearch.study_file import load_study_file

    for line in status_lines(load_study_file(args.study)):
        print(line)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = fn.__doc__ or ""
        sp = sub.add_parser(
            name,
            help=doc.splitlines()[0],
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sp.set_defaults(func=fn)
        return sp

    sp = add("run", cmd_run)
    sp.add_argument("study", help="study TOML (e.g. studies/demo.toml)")
    sp.add_argument("--n-trials", type=int, help="trials to run now (default: study.n_trials)")
    sp.add_argument("--timeout", type=float, help="seconds to run now (default: study.timeout_s)")

    sp = add("status", cmd_status)
    sp.add_argument("study", help="study TOML")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AutoresearchError, EngineError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # always one line
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
