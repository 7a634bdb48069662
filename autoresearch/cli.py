"""`autoresearch` / `python -m autoresearch`: study commands (run, status, confirm, ...)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    p.add_subparsers(dest="command", metavar="COMMAND")
    p.parse_args(argv)
    p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
