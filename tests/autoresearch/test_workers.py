"""Many workers on one study: a real PostgreSQL server, a JournalStorage file, SQLite.

Workers are real `autoresearch worker|run` processes; only the probe child is the stand-in of
ar_helpers (sleeping a little, so overlapping probes would show in the recorded
probe_start/probe_end times).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from ar_helpers import REPO, STAND_IN, process_gone, write_study
from optuna.trial import FrozenTrial, TrialState
from pg_server import PASSWORD, PgServer, find_bin_dir, running_server

from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file

SLOW_STAND_IN = STAND_IN.replace('print("some log line")', 'time.sleep(0.3)\nprint("x")')
ENV = {**os.environ, "AR_TEST_PG_PASSWORD": PASSWORD}


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries not installed (.ci/run installs Debian's postgresql)")
    with running_server() as server:
        yield server


def _study(d: Path, store: Path, storage: str, extra: str = "") -> Path:
    p = write_study(
        d,
        store=store,
        extra_study=f'storage = "{storage}"\nheartbeat_interval = 1\ngrace_period = 3\n{extra}',
    )
    (d / "stand_in.py").write_text(SLOW_STAND_IN)
    text = p.read_text().replace("baseline_repeats = 3", "baseline_repeats = 1")
    p.write_text(text)
    return p


def _workers(p: Path, n: int, count: int, cmd: str = "worker") -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "autoresearch", cmd, str(p), "--n-trials", str(n)],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(count)
    ]


def _finish(procs: list[subprocess.Popen[str]]) -> list[str]:
    outs = []
    for proc in procs:
        out = proc.communicate(timeout=240)[0]
        assert proc.returncode in (0, -signal.SIGKILL), out
        outs.append(out)
    return outs


def _trials(p: Path) -> list[FrozenTrial]:
    os.environ["AR_TEST_PG_PASSWORD"] = PASSWORD
    return open_study(load_study_file(p), create=False).get_trials()


def _assert_no_overlap(trials: list[FrozenTrial]) -> None:
    spans = sorted(
        (
            datetime.fromisoformat(t.user_attrs["probe_start"]),
            datetime.fromisoformat(t.user_attrs["probe_end"]),
            t.number,
        )
        for t in trials
        if "probe_start" in t.user_attrs
    )
    assert len(spans) >= 2
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        assert end <= start, f"probes of trials {a} and {b} overlapped on one machine"


def _assert_each_config_once(trials: list[FrozenTrial]) -> None:
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    keys = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in done]
    assert len(keys) == len(set(keys)), "a config was measured twice"
    for t in trials:
        if t.state == TrialState.PRUNED:  # skipped, never measured: a finished twin exists
            assert "probe_start" not in t.user_attrs and "duplicate_of" in t.user_attrs


@pytest.mark.slow
def test_three_workers_on_postgresql(pg: PgServer, tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = _study(tmp_path, tiny[1], pg.url())
    n = 4
    outs = _finish(_workers(p, n, 3))
    trials = _trials(p)
    assert len(trials) == 3 * n  # each worker ran exactly its n trials
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2 * n
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 3  # all three took part
    _assert_each_config_once(trials)
    _assert_no_overlap(trials)
    assert len({t.user_attrs["machine_fingerprint"] for t in trials}) == 1
    # The password is read from the environment and never printed or stored.
    study = open_study(load_study_file(p), create=False)
    stored = json.dumps([study.user_attrs, [t.user_attrs for t in trials]], default=str)
    assert PASSWORD not in stored and all(PASSWORD not in out for out in outs)


@pytest.mark.slow
def test_killed_worker_trial_is_retried_by_another(
    pg: PgServer, tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    p = _study(tmp_path, tiny[1], pg.url(), 'name = "killed"')
    (tmp_path / "hold").touch()  # the first probe blocks (holding the machine's probe lock)
    procs = _workers(p, 6, 3)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and all(pr.poll() is None for pr in procs)
        time.sleep(0.05)
    # All three hold a trial (two wait for the probe lock): none can be a late starter that
    # would recover the dead trial at startup instead of through the heartbeat.
    while len([t for t in _trials(p) if t.state == TrialState.RUNNING]) < 3:
        assert time.monotonic() < deadline and all(pr.poll() is None for pr in procs)
        time.sleep(0.1)
    held = [t for t in _trials(p) if t.state == TrialState.RUNNING and "child_pid" in t.user_attrs]
    assert len(held) == 1
    victim = next(pr for pr in procs if pr.pid == held[0].user_attrs["worker"]["pid"])
    probe = int(held[0].user_attrs["child_pid"])
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert process_gone(probe)  # PR_SET_PDEATHSIG: the probe died with its worker
    (tmp_path / "hold").unlink()
    _finish(procs)
    trials = _trials(p)
    dead = trials[held[0].number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["fail_reason"].startswith("abandoned: no heartbeat")
    retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == dead.params
    assert retries[0].user_attrs["worker"]["pid"] != victim.pid
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    _assert_each_config_once(trials)
    _assert_no_overlap(trials)


@pytest.mark.slow
def test_two_workers_on_a_journal_file(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = _study(tmp_path, tiny[1], "journal:///study.log")
    _finish(_workers(p, 3, 2))
    assert (tmp_path / "study.log").is_file()  # relative to the study file
    trials = _trials(p)
    assert len(trials) == 6
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    _assert_each_config_once(trials)
    _assert_no_overlap(trials)


@pytest.mark.slow
def test_runs_creating_one_sqlite_study_together(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """Three `run`s started at once on a new study: one study, no IntegrityError."""
    p = _study(tmp_path, tiny[1], "sqlite:///together.db")
    outs = _finish(_workers(p, 2, 3, cmd="run"))
    assert not any("Error" in out for out in outs), outs
    assert len(optuna.get_all_study_names(f"sqlite:///{tmp_path / 'together.db'}")) == 1
    trials = _trials(p)
    assert len(trials) == 6
    _assert_each_config_once(trials)
    _assert_no_overlap(trials)
