"""Reading the project's TOML inputs (configs, suites, spaces, studies) with one error style."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

MAX_TOML_BYTES = 16 << 20  # far above any config; refuses a runaway file before parsing it


def read_toml(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """Parse `path`; a missing, unreadable, non-UTF-8 or invalid file raises `error` naming the
    file and `what` it is. Only regular files are opened (a FIFO would block the read)."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is not a regular file, so not a {what}")
        if st.st_size > MAX_TOML_BYTES:
            raise error(f"{path}: {st.st_size} bytes is too large for a {what}")
        return tomllib.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise error(f"{path}: not valid TOML (nested too deeply)") from None
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
