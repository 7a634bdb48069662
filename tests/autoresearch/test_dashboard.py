"""`autoresearch dashboard`: optuna-dashboard on localhost, stopped with its parent."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from ar_helpers import REPO, process_gone

from autoresearch.cli import main
from autoresearch.dashboard import dashboard_argv
from autoresearch.optuna_view import TABLE_KEY
from autoresearch.study_file import StudySpec

FAKE = textwrap.dedent(
    """
    import os, sys, time
    open(os.environ["FAKE_DASHBOARD_PID"], "w").write(str(os.getpid()))
    while True:
        time.sleep(0.1)
    """
)


LAUNCH = textwrap.dedent(
    """
    import sys
    import autoresearch.dashboard as d
    from autoresearch.study_file import load_study_file
    d.dashboard_executable = lambda: sys.argv[2]
    sys.exit(d.run_dashboard(load_study_file(sys.argv[1]), port=8999))
    """
)


def _start(spec: StudySpec, tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    fake = tmp_path / "optuna-dashboard"
    fake.write_text(f"#!{sys.executable}\n{FAKE}")
    fake.chmod(0o755)
    pidfile = tmp_path / "child.pid"
    env = {**os.environ, "FAKE_DASHBOARD_PID": str(pidfile), "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(spec.path), str(fake)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text():
            return parent, int(pidfile.read_text())
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    parent.kill()
    raise AssertionError("the dashboard child never started")


def test_dashboard_command_line_and_missing_dependency(
    spec: StudySpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    argv = dashboard_argv(spec, 8123, executable="optuna-dashboard")
    # Loopback only: the dashboard can edit the study and has no authentication.
    assert argv == ["optuna-dashboard", spec.storage, "--host", "127.0.0.1", "--port", "8123"]
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    assert main(["dashboard", str(spec.path)]) == 1
    err = capsys.readouterr().err
    assert "optuna-dashboard is not installed" in err and "pip install optuna-dashboard" in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_dashboard_child_stops_with_its_parent(
    spec: StudySpec, tmp_path: Path, sig: signal.Signals
) -> None:
    parent, child = _start(spec, tmp_path)
    parent.send_signal(sig)
    _, err = parent.communicate(timeout=60)
    assert process_gone(child), f"optuna-dashboard child {child} still serving after {sig.name}"
    if sig != signal.SIGKILL:
        assert parent.returncode == 0 and b"Traceback" not in err, err


def test_dashboard_writes_nothing_when_optuna_dashboard_is_missing(
    spec: StudySpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert main(["dashboard", str(spec.path)]) == 1
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert TABLE_KEY not in study.user_attrs
