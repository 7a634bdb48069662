"""Optuna's own tools see what autoresearch sees (metric names, confirmed figures); confirm says
how far it is and warns on a noisy machine; the dashboard's child never outlives it."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from test_autoresearch_front import build
from test_autoresearch_helpers import REPO, process_gone, tiny, write_study

from autoresearch.cli import main
from autoresearch.confirm import confirm_study, spread_warnings
from autoresearch.loop import run_study
from autoresearch.optuna_view import TABLE_KEY
from autoresearch.study_file import StudySpec, load_study_file

__all__ = ["tiny"]

NAMES = ["decode_tok_s", "memory_bytes", "kl_mean"]


def _dashboard_api(storage: str, path: str) -> dict[str, Any]:
    """One GET on optuna-dashboard's own WSGI app (what its web page reads)."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(storage)
    env: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(env)
    status: list[str] = []
    body = b"".join(app(env, lambda s, _h, *_a: status.append(s)))  # type: ignore[arg-type]
    assert status[0].startswith("200"), status
    return json.loads(body)


def test_run_sets_metric_names_that_optuna_dashboard_lists(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    spec = load_study_file(write_study(tmp_path, store=tiny[1], kind="ok"))
    run_study(spec, n_trials=1)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert study.metric_names == NAMES
    detail = _dashboard_api(spec.storage, f"/api/studies/{study._study_id}")
    assert detail["objective_names"] == NAMES  # not "Objective 0/1/2"


def test_confirmed_figures_are_visible_to_optuna_tools(spec: StudySpec) -> None:
    confirm_study(spec, repeats=1, note=lambda _s: None)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert study.metric_names == NAMES  # also on a study made before names were set
    rows = {r["trial"]: r for r in study.user_attrs[TABLE_KEY]}
    assert rows[0]["baseline"] is True and rows[1]["decode_tok_s"] == "1 tok/s"
    assert rows[1]["memory_bytes"] == "1 B" and rows[1]["repeats"] == 1
    detail = _dashboard_api(spec.storage, f"/api/studies/{study._study_id}")
    note = detail["note"]["body"]
    assert "single in-loop measurements" in note and TABLE_KEY in note
    assert "| 1 | 1 | 1 tok/s | 1 B | 1 |" in note  # the stand-in probe measures 1 everywhere
    assert any(a["key"] == TABLE_KEY for a in detail["user_attrs"])


@pytest.fixture
def spec(tmp_path: Path, tiny: tuple[Path, Path]) -> StudySpec:
    return build(tmp_path / "s", tiny[1])


def test_confirm_shows_n_of_m_and_an_eta(spec: StudySpec, capsys: Any) -> None:
    notes: list[str] = []
    summary = confirm_study(spec, repeats=2, note=notes.append)
    runs = [n for n in notes if n.startswith("run ")]
    m = summary.planned
    assert m == 2 * 2 * len(summary.trials) and len(runs) == m == summary.runs
    assert runs[0].startswith(f"run 1 of {m}: repeat 1/2 baseline trial 0") and ", ETA " in runs[0]
    assert runs[-1].startswith(f"run {m} of {m}: ") and "ETA" not in runs[-1]
    assert main(["confirm", str(spec.path), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^runs: (\d+) of \1$", out, re.M)
    assert "confirmed trial 1: decode_tok_s 150 tok/s -> 1 tok/s (x1 baseline), 1 runs" in out


def test_confirm_warns_when_its_spread_is_well_above_the_noise_floor(spec: StudySpec) -> None:
    floor = {"decode_tok_s": {"spread": 0.07, "relative": 0.007}}
    noisy = {0: {"metrics": {"decode_tok_s": 10.0}, "spread": {"decode_tok_s": 3.0}, "repeats": 2}}
    quiet = {0: {"metrics": {"decode_tok_s": 10.0}, "spread": {"decode_tok_s": 0.1}, "repeats": 2}}
    (w,) = spread_warnings(spec, floor, noisy, baseline=0)
    assert w.startswith("baseline trial 0: decode_tok_s spread 30.0% over 2 re-measurements")
    assert "noise floor 0.7%" in w
    assert spread_warnings(spec, floor, quiet, baseline=0) == []
    assert spread_warnings(spec, {}, noisy, baseline=0) == []  # no floor: nothing to compare


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
    parent = subprocess.Popen([sys.executable, "-c", LAUNCH, str(spec.path), str(fake)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    for _ in range(600):
        if pidfile.exists() and pidfile.read_text():
            return parent, int(pidfile.read_text())
        assert parent.poll() is None, parent.communicate()
        time.sleep(0.05)
    parent.kill()
    raise AssertionError("the dashboard child never started")


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
