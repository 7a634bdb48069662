"""Many machines on one study: fingerprints, per-machine baselines and fronts, seeds, twins."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from ar_helpers import SPACES, one_line_error, stored_trials, write_study
from optuna.trial import TrialState

from autoresearch import fleet
from autoresearch.cli import main
from autoresearch.loop import run_study
from autoresearch.results import load_results
from autoresearch.study_file import load_study_file


def test_worker_on_another_machine_is_refused(
    tmp_path: Path,
    tiny: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    monkeypatch.setattr(fleet, "this_machine", lambda *_: "machine-a")
    assert main(["run", str(p), "--n-trials", "1"]) == 0
    monkeypatch.setattr(fleet, "this_machine", lambda *_: "machine-b")
    capsys.readouterr()
    assert main(["worker", str(p), "--n-trials", "1"]) == 1
    err = one_line_error(capsys)
    assert "machine-a" in err and "machine-b" in err and 'machines = "fleet"' in err
    assert len(stored_trials(p)) == 1  # nothing was measured on the other machine


def test_fleet_keeps_baselines_and_results_per_machine(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1], extra_study='machines = "fleet"')
    spec = load_study_file(p)
    for machine in ("machine-a", "machine-b"):
        monkeypatch.setattr(fleet, "this_machine", lambda *_, m=machine: m)
        assert run_study(spec, n_trials=3).completed == 3
    trials = stored_trials(p)
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


def test_resumed_runs_with_a_fixed_seed_sample_new_configs(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    for _ in range(3):  # issue 10: three `run --n-trials 2` used to replay trials 1 and 3
        assert main(["run", str(p), "--n-trials", "2"]) == 0
    done = [t for t in stored_trials(p) if t.state == TrialState.COMPLETE]
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
    trials = stored_trials(p)
    assert [t.state for t in trials[2:]] == [TrialState.PRUNED] * 2
    assert all(t.user_attrs["duplicate_of"] == 1 for t in trials[2:])
    assert all("probe_start" not in t.user_attrs for t in trials[2:])
