"""Opening a study: storages, compatibility, passwords, recovery of abandoned trials."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import pytest
from ar_helpers import one_line_error, write_study
from optuna.trial import TrialState

from autoresearch.backends import mask
from autoresearch.cli import main
from autoresearch.errors import IncompatibleStudy, StorageError
from autoresearch.loop import run_study
from autoresearch.storage import open_study, recover_abandoned
from autoresearch.study_file import load_study_file


def _abandoned_trial(study: optuna.Study, pid: int) -> int:
    trial = study.ask()
    trial.suggest_int("io_threads", 1, 16)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": pid})
    return trial.number


@pytest.mark.parametrize(
    ("url", "needle"),
    [("sqlite:////no/such/dir/x.db", "does not exist"), ("nosuchdb://x", "unknown storage")],
)
def test_unopenable_storage(tmp_path: Path, url: str, needle: str) -> None:
    p = write_study(tmp_path, store=tmp_path, extra_study=f'storage = "{url}"')
    with pytest.raises(StorageError, match=f"study.storage: .*{needle}"):
        open_study(load_study_file(p))


def test_abandoned_trial_of_a_run_that_had_our_pid_is_recovered(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    # Containers restart the run as the same pid (often 1): that pid being alive is us.
    study = open_study(load_study_file(write_study(tmp_path, store=tiny[1])))
    number = _abandoned_trial(study, os.getpid())
    assert recover_abandoned(study) == [number]


def test_abandoned_trial_is_retried_exactly_once_across_a_kill_in_recovery(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = open_study(load_study_file(write_study(tmp_path, store=tiny[1])))
    number = _abandoned_trial(study, 2**22 + 12345)  # above pid_max: never alive

    def killed(*args: object, **kwargs: object) -> None:
        raise SystemExit(9)

    with monkeypatch.context() as m:
        m.setattr(optuna.study.Study, "enqueue_trial", killed)  # dies between FAIL and enqueue
        with pytest.raises(SystemExit):
            recover_abandoned(study)
    assert study.trials[number].state == TrialState.FAIL
    assert recover_abandoned(study) == [number]
    assert recover_abandoned(study) == []
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
    assert len(retries) == 1


def test_empty_study_with_other_directions_is_refused(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    # e.g. made by `optuna create-study`, or killed before being tagged and then edited.
    spec = load_study_file(write_study(tmp_path, store=tiny[1]))
    optuna.create_study(storage=spec.storage, study_name=spec.name, directions=["maximize"])
    with pytest.raises(IncompatibleStudy, match="objectives"):
        open_study(spec)


def test_incompatible_change_is_refused(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=1)
    p.write_text(p.read_text() + '[[objectives]]\nmetric = "ttft_s"\ndirection = "minimize"\n')
    with pytest.raises(IncompatibleStudy, match=r"different objectives.*new name"):
        run_study(load_study_file(p), n_trials=1)


def test_storage_password_is_masked_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert mask("postgresql://u:hunter2@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask("mysql://u@h/db?password=hunter2&x=1") == "mysql://u@h/db?password=***&x=1"
    url = "postgresql://ar:hunter2@127.0.0.1:1/db"  # nothing listens on port 1
    p = write_study(tmp_path, store=tmp_path, extra_study=f'storage = "{url}"')
    spec = load_study_file(p)
    assert spec.storage == "postgresql://ar:***@127.0.0.1:1/db" and "hunter2" not in repr(spec)
    assert spec.storage_url == url
    assert main(["status", str(p)]) == 1
    err = one_line_error(capsys)
    assert "hunter2" not in err and "***" in err


def test_storage_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://ar:${AR_PW_FOR_TEST}@127.0.0.1:1/db"
    p = write_study(tmp_path, store=tmp_path, extra_study=f'storage = "{url}"')
    monkeypatch.delenv("AR_PW_FOR_TEST", raising=False)
    assert main(["status", str(p)]) == 1
    assert "environment variable AR_PW_FOR_TEST" in one_line_error(capsys)
    monkeypatch.setenv("AR_PW_FOR_TEST", "s3cr3t")
    spec = load_study_file(p)
    assert spec.storage_url.endswith("ar:s3cr3t@127.0.0.1:1/db") and "s3cr3t" not in spec.storage


def test_cli_storage_overrides_the_study_file(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    assert main(["run", str(p), "--n-trials", "1", "--storage", "sqlite:///other.db"]) == 0
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "study.db").exists()
    assert main(["status", str(p), "--storage", "sqlite:///other.db"]) == 0


def test_read_only_commands_create_no_files(tmp_path: Path) -> None:
    p = write_study(tmp_path / "s", store=tmp_path, extra_study='storage = "journal:///j.log"')
    before = sorted(tmp_path.rglob("*"))
    assert main(["status", str(p)]) == 1
    assert main(["show", str(p)]) == 1
    assert sorted(tmp_path.rglob("*")) == before
