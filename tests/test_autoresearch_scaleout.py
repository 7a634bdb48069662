"""One study, many processes and machines: fleets, refusals, seeds, duplicates, the probe lock,
masked credentials, cache dir, SIGTERM and hostile study values."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_autoresearch_helpers import REPO, SPACES, process_gone, tiny, write_study

from autoresearch import fleet
from autoresearch.backends import mask
from autoresearch.cachedir import resolve_cache_dir
from autoresearch.cli import main
from autoresearch.errors import StorageError, StudyFileError
from autoresearch.hostlock import lock_path, probe_lock
from autoresearch.loop import run_study
from autoresearch.results import load_results
from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file

__all__ = ["tiny"]


def _trials(p: Path) -> list[optuna.trial.FrozenTrial]:
    # Through open_study: a worker may be creating the database's tables right now.
    return open_study(load_study_file(p), create=False).get_trials()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ---- machines ---------------------------------------------------------------------------------


def test_worker_on_another_machine_is_refused(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    p = write_study(tmp_path, store=tiny[1])
    monkeypatch.setattr(fleet, "this_machine", lambda *_: "machine-a")
    assert main(["run", str(p), "--n-trials", "1"]) == 0
    monkeypatch.setattr(fleet, "this_machine", lambda *_: "machine-b")
    capsys.readouterr()
    assert main(["worker", str(p), "--n-trials", "1"]) == 1
    err = _one_line_error(capsys)
    assert "machine-a" in err and "machine-b" in err and 'machines = "fleet"' in err
    assert len(_trials(p)) == 1  # nothing was measured on the other machine


def test_fleet_keeps_baselines_and_results_per_machine(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1], extra_study='machines = "fleet"')
    spec = load_study_file(p)
    for machine in ("machine-a", "machine-b"):
        monkeypatch.setattr(fleet, "this_machine", lambda *_, m=machine: m)
        assert run_study(spec, n_trials=3).completed == 3
    trials = _trials(p)
    by = {m: fleet.on_machine(trials, m) for m in ("machine-a", "machine-b")}
    assert [len(v) for v in by.values()] == [3, 3]
    for mine in by.values():  # each machine measured its own default config
        assert sum(bool(t.user_attrs.get("baseline")) for t in mine) == 1
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert {"noise_floor_machine-a", "noise_floor_machine-b"} <= set(study.user_attrs)
    assert fleet.machines_of(study) == ["machine-a", "machine-b"]
    # Fronts/exports compare one machine's timings only: this machine's by default.
    res = load_results(spec)
    assert {f.trial.user_attrs["machine_fingerprint"] for f in res.figures} == {"machine-b"}
    assert res.noise_floor() == study.user_attrs["noise_floor_machine-b"]
    res = load_results(spec, machine="machine-a")
    assert {f.trial.user_attrs["machine_fingerprint"] for f in res.figures} == {"machine-a"}
    assert res.baseline is not None and res.baseline.trial.user_attrs["baseline"]


# ---- seeds and duplicates ---------------------------------------------------------------------


def test_resumed_runs_with_a_fixed_seed_sample_new_configs(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    for _ in range(3):  # issue 10: three `run --n-trials 2` used to replay trials 1 and 3
        assert main(["run", str(p), "--n-trials", "2"]) == 0
    done = [t for t in _trials(p) if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    configs = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in done]
    assert len(set(configs)) == 6


def test_derived_seed_is_per_worker_and_per_resume() -> None:
    assert fleet.derived_seed(None, 3, "h:1") is None  # no seed: random, as before
    a = fleet.derived_seed(0, 0, "h:1")
    assert a == fleet.derived_seed(0, 0, "h:1")  # reproducible
    assert len({a, fleet.derived_seed(0, 2, "h:1"), fleet.derived_seed(0, 0, "h:2")}) == 3


def test_a_config_already_measured_is_skipped_not_measured_again(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    space = tmp_path / "one.toml"
    space.write_text('[knobs.cache_policy]\nchoices = ["lfu"]\n')  # one possible config
    p = write_study(tmp_path, store=tiny[1])
    p.write_text(p.read_text().replace(str(SPACES / "io.toml"), str(space)))
    summary = run_study(load_study_file(p), n_trials=4)
    assert (summary.completed, summary.duplicates) == (2, 2)
    trials = _trials(p)
    assert [t.state for t in trials[2:]] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["duplicate_of"] == 1 for t in trials[2:])
    assert all("probe_start" not in t.user_attrs for t in trials[2:])


# ---- the probe lock ---------------------------------------------------------------------------


_TRY_LOCK = "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n" + (
    "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
    "    sys.exit(3)\n"
)


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
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "run", str(p), "--n-trials", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    proc.kill()
    proc.wait()
    # PR_SET_PDEATHSIG: no later `run` is needed to stop the orphan from measuring.
    assert process_gone(int((tmp_path / "started").read_text()))


def test_trials_record_utc_probe_times(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    run_study(load_study_file(p), n_trials=2)
    for t in _trials(p):
        start, end = (t.user_attrs[k] for k in ("probe_start", "probe_end"))
        assert start.endswith("+00:00") and start < end  # ISO UTC sorts as text


# ---- credentials ------------------------------------------------------------------------------


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
    err = _one_line_error(capsys)
    assert "hunter2" not in err and "***" in err


def test_storage_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://ar:${AR_PW_FOR_TEST}@127.0.0.1:1/db"
    p = write_study(tmp_path, store=tmp_path, extra_study=f'storage = "{url}"')
    monkeypatch.delenv("AR_PW_FOR_TEST", raising=False)
    assert main(["status", str(p)]) == 1
    assert "environment variable AR_PW_FOR_TEST" in _one_line_error(capsys)
    monkeypatch.setenv("AR_PW_FOR_TEST", "s3cr3t")
    spec = load_study_file(p)
    assert spec.storage_url.endswith("ar:s3cr3t@127.0.0.1:1/db") and "s3cr3t" not in spec.storage


def test_cli_storage_overrides_the_study_file(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    assert main(["run", str(p), "--n-trials", "1", "--storage", "sqlite:///other.db"]) == 0
    assert (tmp_path / "other.db").is_file() and not (tmp_path / "study.db").exists()
    assert main(["status", str(p), "--storage", "sqlite:///other.db"]) == 0


# ---- cache dir, paths, read-only commands -----------------------------------------------------


def test_cache_dir_order_env_then_study_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTORESEARCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(None, tmp_path) == tmp_path / "xdg" / "moe-autoresearch"
    assert resolve_cache_dir("c", tmp_path / "studies") == tmp_path / "studies" / "c"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("c", tmp_path) == tmp_path / "env"


def test_copied_study_file_names_both_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "mine" / "demo.toml"
    copy.parent.mkdir()
    copy.write_text((REPO / "studies" / "demo.toml").read_text())
    assert main(["status", str(copy)]) == 1
    err = _one_line_error(capsys)
    assert str(tmp_path / "search_spaces" / "demo.toml") in err  # where it looked
    assert str(copy.parent) in err and "'../search_spaces/demo.toml'" in err  # and why
    # Next to a copy of the spaces the same relative path works.
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "demo.toml").write_text((SPACES / "demo.toml").read_text())
    assert load_study_file(copy).space.path == tmp_path / "search_spaces" / "demo.toml"


def test_read_only_commands_create_no_files(tmp_path: Path) -> None:
    p = write_study(tmp_path / "s", store=tmp_path, extra_study='storage = "journal:///j.log"')
    before = sorted(tmp_path.rglob("*"))
    assert main(["status", str(p)]) == 1
    assert main(["show", str(p)]) == 1
    assert sorted(tmp_path.rglob("*")) == before


# ---- hostile values and faults ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("trial_timeout_s = inf", "study.trial_timeout_s"),
        ("trial_timeout_s = nan", "study.trial_timeout_s"),
        ("trial_timeout_s = 1e300", "study.trial_timeout_s"),
        ("timeout_s = -inf", "study.timeout_s"),
        ('machines = "many"', "study.machines"),
        ("heartbeat_interval = 0", "study.heartbeat_interval"),
        ("heartbeat_interval = 10\ngrace_period = 5", "study.grace_period"),
        ('storage = "redis://x"', "study.storage"),
    ],
)
def test_bad_study_values_are_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, key: str
) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text().replace("trial_timeout_s = 20\n", "").replace(
        "[study]\n", f"[study]\n{line}\n"))  # fmt: skip
    assert main(["run", str(p)]) == 1
    err = _one_line_error(capsys)
    assert str(p) in err and key in err


@pytest.mark.parametrize("bound", ["{ max = -5 }", "{ max = 0 }", "{ max = nan }"])
def test_impossible_memory_limit_is_refused(tmp_path: Path, bound: str) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text().replace("memory_bytes = { max = 1e12 }", f"memory_bytes = {bound}"))
    with pytest.raises(StudyFileError, match=re.escape(f"{p}: constraints.memory_bytes.max")):
        load_study_file(p)


def test_study_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_bytes(p.read_bytes().replace(b"sampler", b"sam\xffpler"))
    assert main(["status", str(p)]) == 1
    assert "not UTF-8" in _one_line_error(capsys)


@pytest.mark.parametrize("args", [["--n-trials", "-2"], ["--timeout", "-5"], ["--timeout", "nan"]])
def test_negative_counts_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "x.toml"), *args])
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_disk_full_during_run_is_one_line_and_requeues(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from engine.config import EngineConfig

    def full(self: EngineConfig, path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    p = write_study(tmp_path, store=tiny[1])
    monkeypatch.setattr(EngineConfig, "to_toml", full)
    assert main(["run", str(p), "--n-trials", "1"]) == 1
    assert "disk full" in _one_line_error(capsys)
    first, retry = _trials(p)
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith(
        "disk full"
    )
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "hold").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "run", str(p), "--n-trials", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.1)
    child = int((tmp_path / "started").read_text())
    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
    tmp_dir = Path(next(a for a in cmdline if "autoresearch-trial-" in a)).parent
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 130, out
    assert process_gone(child) and not tmp_dir.exists()  # no orphan probe, no temp dir left
    first, retry = _trials(p)
    assert first.state == TrialState.FAIL and "SIGTERM" in first.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 0


def test_worker_without_limits_runs_until_sigterm(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])  # study.n_trials = 2: per `run`, not per worker
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "worker", str(p)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline
        with contextlib.suppress(StorageError):  # the worker has not created the study yet
            if sum(t.state == TrialState.COMPLETE for t in _trials(p)) >= 4:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, out  # stopped by the signal, not by study.n_trials
    assert not [t for t in _trials(p) if t.state == TrialState.RUNNING]
