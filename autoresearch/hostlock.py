"""One probe at a time per machine: an flock on a lock file in the cache dir.

Two probes at once compete for the disk, RAM and cores, so both timings would be wrong. Every
worker takes this lock around its probe (and only its probe: synth, pack and screening run
alongside). flock (not POSIX lockf) because its lock belongs to the open file, which the probe
child inherits: if the worker is killed -9 the lock is held until its probe is gone as well,
and the kernel drops it when both are dead, so a crash never leaves the machine locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from autoresearch.errors import AutoresearchError


def lock_path(cache_dir: Path) -> Path:
    # Per host: a cache dir on a shared filesystem must not serialize the whole fleet.
    return cache_dir / "locks" / f"probe-{socket.gethostname()}.lock"


@contextlib.contextmanager
def probe_lock(cache_dir: Path) -> Iterator[int]:
    """Hold the machine's probe lock; yields the fd to hand to the probe child (pass_fds)."""
    with exclusive(lock_path(cache_dir)) as fd:
        yield fd


def ask_lock_path(cache_dir: Path, db: Path) -> Path:
    digest = hashlib.sha256(str(db.resolve()).encode()).hexdigest()[:16]
    return cache_dir / "locks" / f"ask-{digest}.lock"


@contextlib.contextmanager
def ask_lock(cache_dir: Path, db: Path | None) -> Iterator[None]:
    """Serialize taking the next trial from a SQLite study among this machine's workers.

    On SQLite, Optuna's "pop a WAITING trial" reads outside the write transaction, so two
    processes can both take the same enqueued trial; PostgreSQL/MySQL lock the row instead.
    """
    if db is None:
        yield
        return
    with exclusive(ask_lock_path(cache_dir, db)):
        yield


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[int]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise AutoresearchError(
            f"cannot create the lock file {path} ({e.strerror}); set AUTORESEARCH_CACHE_DIR "
            "or study.cache_dir to a writable directory"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the holder (another worker) to finish
        yield fd
    finally:
        os.close(fd)  # an inherited copy (a probe child still alive) keeps holding it
