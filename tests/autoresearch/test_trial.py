"""One trial's probe child: killed with its worker or on Ctrl-C, timed in UTC, one at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ar_helpers import process_gone, start_run, stored_trials, wait_held_trial, write_study

from autoresearch.hostlock import lock_path, probe_lock
from autoresearch.loop import run_study
from autoresearch.study_file import load_study_file
from autoresearch.trial import run_probe
from engine.config import EngineConfig

_TRY_LOCK = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n" + (
    "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
    "    sys.exit(3)\n"
)


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
    assert pids and process_gone(pids[0])


def test_probe_lock_excludes_other_processes_until_released(tmp_path: Path) -> None:
    def other_can_lock() -> bool:
        rc = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock_path(tmp_path))]).returncode
        assert rc in (0, 3)
        return rc == 0

    with probe_lock(tmp_path) as fd:
        assert fd >= 0 and not other_can_lock()
    assert other_can_lock()


def test_probe_dies_with_its_killed_worker(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "hold").touch()
    proc = start_run(p, 1)
    wait_held_trial(tmp_path, proc)
    proc.kill()
    proc.wait()
    # PR_SET_PDEATHSIG: no later `run` is needed to stop the orphan from measuring.
    assert process_gone(int((tmp_path / "started").read_text()))


def test_trials_record_utc_probe_times(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=2)
    for t in stored_trials(p):
        start, end = (t.user_attrs[k] for k in ("probe_start", "probe_end"))
        assert start.endswith("+00:00") and start < end  # ISO UTC sorts as text
