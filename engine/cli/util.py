"""What both CLIs (`moe-engine`, `autoresearch`) share: docstring-as-help subcommands and one
error style (one line on stderr, exit 1; Ctrl-C exits 130)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def add_command(sub: argparse._SubParsersAction, name: str, fn: Handler) -> argparse.ArgumentParser:
    """A subcommand whose help is the handler's docstring (first line in the command list)."""
    doc = fn.__doc__ or ""
    sp = sub.add_parser(
        name,
        help=doc.splitlines()[0] if doc else None,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.set_defaults(func=fn)
    return sp


def dispatch(args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    """Run the chosen handler; errors raised on purpose print one line, not a traceback."""
    try:
        return int(args.func(args))
    except errors as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
