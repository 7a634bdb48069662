"""Temp folders for atomic writes (synth, pack) that a kill -9 cannot leak for good.

Each temp folder carries its creator's pid: `<prefix><pid>-XXXXXXXX`. The next run in the same
parent removes the ones whose process is gone; a live writer's folder (another pack running
now) is never touched.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path


def make_tmp(parent: Path, prefix: str) -> Path:
    """A fresh temp folder `<prefix><pid>-XXXX` in `parent`, after removing dead ones."""
    clean_stale(parent, prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def clean_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove `<prefix><pid>-*` folders in `parent` whose pid is not running; returns them."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-[A-Za-z0-9_]+$")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if m and p.is_dir() and not p.is_symlink() and not _alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM  # exists, owned by someone else
    except (OverflowError, ValueError):
        return False
    return True
