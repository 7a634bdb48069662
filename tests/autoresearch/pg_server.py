"""A real, throwaway PostgreSQL server for the multi-worker tests.

initdb + pg_ctl from Debian's `postgresql` package (`.ci/run` installs it when missing) on a
temp dir and a free local port, with password authentication so the tests can check that the
password never leaks. PostgreSQL refuses to run as root: as root the server runs as the
`postgres` user (created by the package), else as `nobody`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

USER = "autoresearch"
PASSWORD = "s3cret-Pg-pw"  # must never show up in output, logs or the study's attrs


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    database: str = "postgres"

    def url(self, password: str = "${AR_TEST_PG_PASSWORD}") -> str:
        return f"postgresql://{USER}:{password}@{self.host}:{self.port}/{self.database}"


def find_bin_dir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    found = shutil.which("pg_ctl")
    return Path(found).resolve().parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], int | None, int | None]:
    """argv prefix to run a server binary as a non-root user, and that user's uid/gid."""
    if os.geteuid() != 0:
        return [], None, None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return ["runuser", "-u", name, "--"], pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (apt-get install -y postgresql)")
    prefix, uid, gid = _as_user()
    root = Path(tempfile.mkdtemp(prefix="ar-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if uid is not None:
        os.chown(root, uid, gid or -1)
        os.chown(pwfile, uid, gid or -1)
    port = _free_port()
    run = {"check": True, "capture_output": True, "timeout": 120}
    try:
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                USER,
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
            ],
            **run,
        )
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
            **run,
        )
        yield PgServer("127.0.0.1", port)
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
