"""`autoresearch run`: failures recorded with reasons, resume after kill -9 and Ctrl-C,
incompatible edits refused, and real `python -m engine probe` trials end to end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_autoresearch_helpers import REPO, process_gone, tiny, write_study

from autoresearch.cli import main
from autoresearch.errors import IncompatibleStudy
from autoresearch.loop import run_study
from autoresearch.status import status_lines
from autoresearch.study_file import load_study_file

__all__ = ["tiny"]  # the session fixture, imported so pytest finds it here


def load(path: Path) -> optuna.Study:
    spec = load_study_file(path)
    return optuna.load_study(study_name=spec.name, storage=spec.storage)


def test_stand_in_study_baseline_is_trial_0(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    study = load(p)  # Optuna's own API reads the study file
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert trials[0].user_attrs["baseline"] is True
    assert trials[0].user_attrs["config"]["cache_bytes"] == 2 << 30  # EngineConfig() default
    assert trials[1].user_attrs["samples"] == {"decode_tok_s": [0.9, 1.0, 1.1]}
    assert trials[1].user_attrs["decode_tok_s"] == 1.0
    assert "cache_bytes" in trials[1].user_attrs["config"]
    assert study.user_attrs["noise_floor"]["decode_tok_s"]["spread"] == 0.1
    assert study.user_attrs["machine"] == {"cpu": "stand-in"}
    lines = status_lines(load_study_file(p))
    assert "complete: 3" in lines and "failed: 0" in lines
    assert any(ln.startswith("noise floor decode_tok_s: ± 0.1") for ln in lines)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("crash", "crash: probe exited 3: error: stand-in crashed on purpose"),
        ("oom", "crash: probe killed by SIGKILL (out of memory?)"),
        ("garbage", "garbage: last stdout line is not JSON"),
        ("hang", "hang: no result after 1 s"),
    ],
)
def test_failing_child_is_fail_with_reason(
    tmp_path: Path, tiny: tuple[Path, Path], kind: str, reason: str
) -> None:
    p = write_study(tmp_path, store=tiny[1], kind=kind, extra_study="repeats = 3")
    text = p.read_text().replace("trial_timeout_s = 20", "trial_timeout_s = 1")
    p.write_text(text.replace("baseline_repeats = 3", "baseline_repeats = 1"))
    summary = run_study(load_study_file(p), n_trials=2)
    assert (summary.completed, summary.failed) == (0, 2)  # the study went on after a failure
    for t in load(p).trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith(reason)


def test_incompatible_change_is_refused(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=1)
    p.write_text(p.read_text() + '[[objectives]]\nmetric = "ttft_s"\ndirection = "minimize"\n')
    with pytest.raises(IncompatibleStudy, match=r"different objectives.*new name"):
        run_study(load_study_file(p), n_trials=1)


def _start(p: Path, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "run", str(p), "--n-trials", str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _wait_started(d: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 60
    while not (d / "started").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "the held trial never started"
        time.sleep(0.05)
    time.sleep(0.1)  # the pid is written right after the file is created
    return int((d / "started").read_text())


def test_resume_after_sigkill_mid_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=2)  # trials 0 (baseline) and 1 complete
    before = [(t.number, t.values, t.params) for t in load(p).trials]
    (tmp_path / "hold").touch()  # the next trial's child blocks until released
    proc = _start(p, 2)
    child = _wait_started(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load(p).trials[2].state == TrialState.RUNNING  # what kill -9 leaves behind
    (tmp_path / "hold").unlink()
    assert main(["run", str(p), "--n-trials", "2"]) == 0
    assert process_gone(child)  # the orphaned probe was killed, not left measuring
    trials = load(p).trials
    assert [(t.number, t.values, t.params) for t in trials[:2]] == before  # intact
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["fail_reason"].startswith("abandoned")
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params
    assert [t.state for t in trials[3:]] == [TrialState.COMPLETE] * 2


def test_ctrl_c_fails_and_requeues_running_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "hold").touch()
    proc = _start(p, 2)
    _wait_started(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    (tmp_path / "hold").unlink()
    trials = load(p).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert run_study(load_study_file(p), n_trials=1).completed == 1
    retry = load(p).trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["baseline"] is True


@pytest.mark.slow
def test_real_probe_end_to_end(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """Real `python -m engine probe` trials on tiny store variants packed on demand."""
    p = write_study(
        tmp_path,
        model=tiny[0],
        kind=None,
        space="quality.toml",
        extra_study="cold = false",
        constraints="kl_mean = { max = 10.0 }",
    )
    text = p.read_text().replace("baseline_repeats = 3", "baseline_repeats = 2")
    p.write_text(text.replace("trial_timeout_s = 20", "trial_timeout_s = 120"))
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    study = load(p)
    assert study.trials[0].user_attrs["baseline"] is True
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done, [t.user_attrs.get("fail_reason") for t in study.trials]
    for t in done:
        assert t.user_attrs["decode_tok_s"] > 0 and "machine_id" in t.user_attrs
    assert "noise_floor" in study.user_attrs and "machine" in study.user_attrs
    # Variants are built in this machine's cache dir (tests: conftest's), not by the study.
    assert (load_study_file(p).cache_dir / "stores").is_dir()
    assert not (tmp_path / "stores").exists()
