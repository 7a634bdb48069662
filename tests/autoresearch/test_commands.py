"""The CLI as a user meets it: one-line errors, quiet closed pipes, literal brackets."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
from ar_helpers import MARKUP, REPO, build, fail_with_markup, write_study
from optuna.trial import TrialState

from autoresearch.cli import main
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec


class _ClosedPipe(io.StringIO):
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_cli_error_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path / "nope")
    assert main(["run", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "model.store" in err


def test_status_of_a_study_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path)
    assert main(["status", str(p)]) == 1
    assert "no study 'study'" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()  # a read-only command never creates a file


def test_show_and_status_print_brackets_literally(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: Any
) -> None:
    spec = build(tmp_path, tiny[1], failures=False)
    fail_with_markup(spec)
    assert main(["show", str(spec.path)]) == 0
    out = capsys.readouterr().out
    assert MARKUP in out  # in the failures table, as it was recorded
    assert main(["status", str(spec.path)]) == 0
    assert MARKUP in capsys.readouterr().out


def test_closed_pipe_exits_quietly_in_process(
    spec: StudySpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["status", str(spec.path)]) == 141


def test_status_piped_into_head_has_no_traceback(spec: StudySpec) -> None:
    study = open_study(spec)
    for i in range(40):  # > 64 KiB of status so the pipe really fills and closes
        reason = f"crash {i}: " + "x" * 4000
        study.add_trial(
            optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": reason})
        )
    cmd = f"{sys.executable} -m autoresearch status {spec.path} | head -1"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, env=env)
    assert r.stdout == f"study: {spec.name}\n"
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
