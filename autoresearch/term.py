"""Terminal output shared by the commands: a console that does not fold tables into 80 columns
when piped, text that rich never parses as markup, and a quiet exit on a closed pipe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.text import Text

# Piped to a file or pager, rich would assume 80 columns and fold every cell; tables only
# take the width their content needs, so a wide limit costs nothing.
PIPE_WIDTH = 250


def console(file: IO[str] | None = None) -> Console:
    """A rich console; wide when the output is not a terminal (a pipe, a file, a log)."""
    probe = Console(file=file)
    if probe.is_terminal:
        return probe
    return Console(file=file, width=PIPE_WIDTH)


def plain(value: Any) -> Text:
    """Text from data (a failure reason, a child's stderr, a knob value) that rich never reads
    as markup: '[/bold]' or '[engine]' print as they are."""
    return Text(str(value))


def quiet_on_closed_pipe(run: Callable[[], int]) -> int:
    """Run a command; if the reader went away (`autoresearch status | head`), exit 141 quietly.

    Python would otherwise print a BrokenPipeError traceback, also while flushing at exit, so
    stdout is pointed at /dev/null before returning.
    """
    try:
        rc = run()
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is not a real file (captured in tests): nothing will flush to it
        finally:
            os.close(devnull)
        return 141  # 128 + SIGPIPE: what a shell reports for a command its pipe closed
