"""`autoresearch dashboard`: optuna-dashboard on the study's own storage, on 127.0.0.1 only.

optuna-dashboard is an optional dependency (the `dashboard` extra). It reads the study
unmodified, so `optuna-dashboard sqlite:///studies/<name>.db` works directly too.

The child never outlives us: SIGTERM/SIGINT/SIGHUP are passed on to it (then we wait for it),
and on Linux it gets PR_SET_PDEATHSIG so even a kill -9 of this process stops it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from autoresearch.errors import AutoresearchError
from autoresearch.study_file import StudySpec

HOST = "127.0.0.1"  # never 0.0.0.0: the dashboard can edit the study and has no auth
INSTALL = "pip install optuna-dashboard  (or: pip install -e '.[dashboard]')"


class DashboardMissing(AutoresearchError):
    """optuna-dashboard is not installed."""


def dashboard_executable() -> str:
    """The optuna-dashboard console script next to this Python, else on PATH."""
    local = Path(sys.executable).parent / "optuna-dashboard"
    if local.is_file():
        return str(local)
    found = shutil.which("optuna-dashboard")
    if found is None:
        raise DashboardMissing(f"optuna-dashboard is not installed; install it with: {INSTALL}")
    return found


def dashboard_argv(spec: StudySpec, port: int = 8080, executable: str | None = None) -> list[str]:
    if not 0 < port < 65536:
        raise AutoresearchError(f"--port must be in 1..65535, got {port}")
    exe = executable or dashboard_executable()
    # The real URL (spec.storage masks a password): optuna-dashboard must be able to connect.
    return [exe, spec.storage_url, "--host", HOST, "--port", str(port)]


def run_dashboard(spec: StudySpec, port: int = 8080) -> int:
    """Serve until Ctrl-C or SIGTERM; the study must exist (we never create one here)."""
    from autoresearch.optuna_view import publish
    from autoresearch.results import load_results

    argv = dashboard_argv(spec, port)  # a missing optuna-dashboard fails before any write
    # A typo'd study fails here, not as an empty dashboard; metric names and the confirmed
    # figures note are (re)written so studies made before they existed show them too.
    publish(load_results(spec))
    print(f"dashboard: http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)
    return serve(argv)


def serve(argv: list[str]) -> int:
    """Run the dashboard child until it exits or we are told to stop; then it is gone too."""
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent_hook())
    stopped: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopped.append(signum)
        if child.poll() is None:
            child.terminate()

    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
    old = {s: signal.signal(s, stop) for s in signals}
    try:
        while True:
            try:
                rc = child.wait(timeout=5 if stopped else None)
                break
            except subprocess.TimeoutExpired:
                child.kill()  # ignored SIGTERM for 5 s
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for s, h in old.items():
            signal.signal(s, h)
    return 0 if stopped else rc


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGTERM when we die (Linux; else None)."""
    if not sys.platform.startswith("linux"):
        return None
    # Loaded here in the parent: the child only calls it between fork and exec.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)  # the parent died before prctl took effect

    return hook
