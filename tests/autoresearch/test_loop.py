"""The run loop: baseline first, failures recorded, Ctrl-C/SIGTERM/kill -9/full disk survived."""

from __future__ import annotations

import contextlib
import errno
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from ar_helpers import (
    REPO,
    load_study,
    one_line_error,
    process_gone,
    start_run,
    stored_trials,
    wait_held_trial,
    write_study,
)
from optuna.trial import TrialState

from autoresearch.cli import main
from autoresearch.errors import StorageError
from autoresearch.loop import run_study
from autoresearch.space import Space
from autoresearch.status import status_lines
from autoresearch.study_file import load_study_file
from engine.config import EngineConfig


def _after_tell(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    """Make the first completing tell() commit, then raise `exc` (death or Ctrl-C right after)."""
    real = optuna.study.Study.tell
    fired: list[bool] = []

    def tell(self, trial, values=None, state=None, skip_if_finished=False):  # type: ignore[no-untyped-def]
        out = real(self, trial, values, state, skip_if_finished)
        if values is not None and not fired:
            fired.append(True)
            raise exc
        return out

    monkeypatch.setattr(optuna.study.Study, "tell", tell)


def test_stand_in_study_baseline_is_trial_0(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    study = load_study(p)  # Optuna's own API reads the study file
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
    for t in load_study(p).trials:
        assert t.state == TrialState.FAIL
        assert t.user_attrs["fail_reason"].startswith(reason)


def test_resume_after_sigkill_mid_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=2)  # trials 0 (baseline) and 1 complete
    before = [(t.number, t.values, t.params) for t in load_study(p).trials]
    (tmp_path / "hold").touch()  # the next trial's child blocks until released
    proc = start_run(p, 2)
    child = wait_held_trial(tmp_path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_study(p).trials[2].state == TrialState.RUNNING  # what kill -9 leaves behind
    (tmp_path / "hold").unlink()
    assert main(["run", str(p), "--n-trials", "2"]) == 0
    assert process_gone(child)  # the orphaned probe was killed, not left measuring
    trials = load_study(p).trials
    assert [(t.number, t.values, t.params) for t in trials[:2]] == before  # intact
    assert trials[2].state == TrialState.FAIL
    assert trials[2].user_attrs["fail_reason"].startswith("abandoned")
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params
    assert [t.state for t in trials[3:]] == [TrialState.COMPLETE] * 2


def test_ctrl_c_fails_and_requeues_running_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "hold").touch()
    proc = start_run(p, 2)
    wait_held_trial(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    (tmp_path / "hold").unlink()
    trials = load_study(p).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert run_study(load_study_file(p), n_trials=1).completed == 1
    retry = load_study(p).trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["baseline"] is True


def test_noise_floor_survives_death_right_after_baseline_tell(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    _after_tell(monkeypatch, SystemExit(9))
    with pytest.raises(SystemExit):
        run_study(load_study_file(p), n_trials=1)
    study = load_study(p)
    assert study.trials[0].state == TrialState.COMPLETE
    # The baseline is never re-run once complete: its noise floor must already be stored.
    assert study.user_attrs["noise_floor"]["decode_tok_s"]["spread"] == 0.1


def test_ctrl_c_after_trial_was_told_is_a_clean_interrupt(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    _after_tell(monkeypatch, KeyboardInterrupt())
    summary = run_study(load_study_file(p), n_trials=2)
    assert summary.interrupted
    # Completed, so neither failed nor re-enqueued (no duplicate measurement next run).
    assert [t.state for t in load_study(p).trials] == [TrialState.COMPLETE]


def test_ctrl_c_mid_suggest_requeues_the_exact_baseline(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    spec = load_study_file(p)

    def interrupted(self: Space, trial: optuna.Trial, only: set[str] | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Space, "suggest", interrupted)
    assert run_study(spec, n_trials=1).interrupted
    retry = load_study(p).trials[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["baseline"] is True
    monkeypatch.undo()
    run_study(spec, n_trials=1)
    # The retry measured the engine default again, not a fresh sample of the baseline's knobs.
    ran = load_study(p).trials[1]
    assert ran.state == TrialState.COMPLETE and ran.user_attrs["retry_of"] == 0
    assert ran.params == spec.space.baseline_params() != {}
    budget = ("memory_budget_bytes", "expert_memory_fraction")  # the study's, not a knob
    knobs = {k: v for k, v in ran.user_attrs["config"].items() if k not in budget}
    assert knobs == EngineConfig().to_dict()


def test_failed_baseline_is_measured_again_by_the_next_run(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    # Without a complete baseline there is no noise floor and confirm refuses; confirm says
    # "run first", so the next run must actually measure it.
    p = write_study(tmp_path, store=tiny[1], kind="crash")
    run_study(load_study_file(p), n_trials=1)
    p.write_text(p.read_text().replace('"crash"', '"ok"'))
    run_study(load_study_file(p), n_trials=1)
    trials = load_study(p).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.COMPLETE and trials[1].user_attrs["baseline"] is True
    assert "noise_floor" in load_study(p).user_attrs


def test_disk_full_during_run_is_one_line_and_requeues(
    tmp_path: Path,
    tiny: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from engine.config import EngineConfig

    def full(self: EngineConfig, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    p = write_study(tmp_path, store=tiny[1])
    monkeypatch.setattr(EngineConfig, "to_toml", full)
    assert main(["run", str(p), "--n-trials", "1"]) == 1
    assert "disk full" in one_line_error(capsys)
    first, retry = stored_trials(p)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith(
        "disk full"
    )
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "hold").touch()
    proc = start_run(p, 2)
    child = wait_held_trial(tmp_path, proc)
    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
    tmp_dir = Path(next(a for a in cmdline if "autoresearch-trial-" in a)).parent
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    assert process_gone(child) and not tmp_dir.exists()  # no orphan probe, no temp dir left
    first, retry = stored_trials(p)
    assert first.state == TrialState.FAIL and "SIGTERM" in first.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0


def test_worker_without_limits_runs_until_sigterm(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])  # study.n_trials = 2: per `run`, not per worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "worker", str(p)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline
        with contextlib.suppress(StorageError):  # the worker has not created the study yet
            if sum(t.state == TrialState.COMPLETE for t in stored_trials(p)) >= 4:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, out  # stopped by the signal, not by study.n_trials
    assert not [t for t in stored_trials(p) if t.state == TrialState.RUNNING]
