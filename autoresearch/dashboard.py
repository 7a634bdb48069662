"""`autoresearch dashboard`: optuna-dashboard on the study's own storage, on 127.0.0.1 only.

optuna-dashboard is an optional dependency (the `dashboard` extra). It reads the study
unmodified, so `optuna-dashboard sqlite:///studies/<name>.db` works directly too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
    return [exe, spec.storage, "--host", HOST, "--port", str(port)]


def run_dashboard(spec: StudySpec, port: int = 8080) -> int:
    """Serve until Ctrl-C; the study must exist (we never create one here)."""
    from autoresearch.storage import open_study

    open_study(spec, create=False)  # a typo'd study fails here, not as an empty dashboard
    argv = dashboard_argv(spec, port)
    print(f"dashboard: http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(argv)
    except KeyboardInterrupt:
        return 0
