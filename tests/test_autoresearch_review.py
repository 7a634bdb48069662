"""Crash-safety, Ctrl-C and bad-input holes found in review, each pinned by the input it needs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest
from test_autoresearch_helpers import tiny

from autoresearch.study_file import load_study_file
from autoresearch.trial import run_probe
from engine.config import EngineConfig

__all__ = ["tiny"]


def _load(p: Path) -> optuna.Study:
    spec = load_study_file(p)
    return optuna.load_study(study_name=spec.name, storage=spec.storage)


def _gone(pid: int) -> bool:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_while_recording_child_pid_kills_the_probe(tmp_path: Path) -> None:
    # on_start writes to the study; a Ctrl-C there must not leave the probe running on its own.
    pids: list[int] = []

    def on_start(pid: int) -> None:
        pids.append(pid)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_probe(
            EngineConfig(),
            store=tmp_path,
            suite=None,
            repeats=1,
            cold=False,
            timeout_s=30,
            required=[],
            template=("{python}", "-c", "import time; time.sleep(30)"),
            on_start=on_start,
        )
    assert pids and _gone(pids[0])
