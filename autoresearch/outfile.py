"""Writing an output file (export, report) without harming what the path already is.

A regular file is replaced atomically (temp file in the same folder + rename), so a crash never
leaves a half file. A symlink is written through: its target is replaced, the link stays. A
special file (/dev/null, a FIFO, a device) or a directory is refused: renaming over it would
turn /dev/null into a regular file, and a FIFO would block.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from autoresearch.errors import AutoresearchError


class OutputRefused(AutoresearchError):
    """An output path that must not be written (a directory or a special file)."""


def write_text(path: str | Path, text: str, *, flag: str = "-o") -> Path:
    """Write `text` to `path` (UTF-8) safely; returns the path written (a link's target)."""
    given = Path(path)
    target = Path(os.path.realpath(given))  # through every symlink, even a chain of them
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputRefused(f"{flag} {given}: cannot inspect it ({e.strerror})") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        name = "tuned.toml" if given.suffix in (".toml", ".json", "") else "report.html"
        raise OutputRefused(f"{flag} {given} is a directory; give a file, e.g. {given / name}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OutputRefused(
            f"{flag} {given} is not a regular file ({_what(st.st_mode)}); refusing to replace "
            "it, give a file path"
        )
    if not target.parent.is_dir():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputRefused(
                f"{flag} {given}: cannot create folder {target.parent} ({e.strerror})"
            ) from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))  # keep the replaced file's permissions
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # what a plain open() would have made
        os.replace(tmp, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputRefused(f"{flag} {given}: cannot write it ({e.strerror})") from None
    return target


def _what(mode: int) -> str:
    for test, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "a special file"
