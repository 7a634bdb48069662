"""Samplers: the named ones, the auto rule, constraints honoured."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ar_helpers import MAXMIN, space_of, write_study

from autoresearch import sampler
from autoresearch.errors import StudyFileError
from autoresearch.loop import run_study
from autoresearch.space import Knob
from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file

NUMERIC = space_of(
    Knob("cache_fraction", low=0.02, high=0.8, log=True), Knob("io_threads", low=1, high=8)
)


CATEGORICAL = space_of(*(Knob(n, choices=("a", "b")) for n in "vwxyz"))  # 5 > 4


def _feasible_share(constrained: bool) -> float:
    s = sampler.make_sampler("tpe", seed=0, space=NUMERIC, n_trials=60)
    study = optuna.create_study(directions=MAXMIN, sampler=s)
    for _ in range(60):
        t = study.ask()
        x = t.suggest_float("x", 0, 1)
        if constrained:
            t.set_constraint("x", x - 0.3)  # feasible: x <= 0.3; the objectives pull x up
        study.tell(t, [x, -x])
    return sum(t.params["x"] <= 0.3 for t in study.trials[30:]) / 30


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("nsga2", optuna.samplers.NSGAIISampler),
    ],
)
def test_named_samplers(name: str, cls: type) -> None:
    assert isinstance(sampler.make_sampler(name, seed=0, space=NUMERIC, n_trials=50), cls)


def test_auto_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampler, "gp_available", lambda: True)
    assert sampler.choose_sampler("auto", NUMERIC, 100)[0] == "gp"
    assert sampler.choose_sampler("auto", NUMERIC, 1000)[0] == "tpe"  # big budget
    assert sampler.choose_sampler("auto", NUMERIC, None)[0] == "tpe"  # open-ended
    assert sampler.choose_sampler("auto", CATEGORICAL, 100)[0] == "tpe"  # categorical
    monkeypatch.setattr(sampler, "gp_available", lambda: False)
    name, why = sampler.choose_sampler("auto", NUMERIC, 100)
    assert name == "tpe" and "torch" in why
    with pytest.raises(StudyFileError, match=r"needs torch and scipy.*\[gp\]"):
        sampler.make_sampler("gp", seed=0, space=NUMERIC, n_trials=10)


def test_gp_sampler_built_when_torch_present() -> None:
    pytest.importorskip("torch")
    s = sampler.make_sampler("gp", seed=0, space=NUMERIC, n_trials=10)
    assert isinstance(s, optuna.samplers.GPSampler)


def test_unknown_sampler_refused(tmp_path: Path) -> None:
    with pytest.raises(StudyFileError, match=r"study.sampler must be one of"):
        sampler.make_sampler("cmaes", seed=0, space=NUMERIC, n_trials=10)
    p = write_study(tmp_path, store=tmp_path, extra_study="")
    p.write_text(p.read_text().replace('sampler = "random"', 'sampler = "cmaes"'))
    with pytest.raises(StudyFileError, match="sampler must be one of"):
        load_study_file(p)


def test_samplers_respect_constraints_from_set_constraint() -> None:
    """Optuna 5 samplers read Trial.set_constraint (no constraints_func): TPE stays feasible."""
    free, bound = _feasible_share(False), _feasible_share(True)
    assert bound >= 0.4 and bound > 2 * free


@pytest.mark.slow
def test_gp_study_runs_past_its_startup_trials(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """GP in the real loop: conditional knobs, constraints, beyond its 10 random trials."""
    pytest.importorskip("torch")
    pytest.importorskip("scipy")
    p = write_study(tmp_path, store=tiny[1])
    p.write_text(p.read_text().replace('sampler = "random"', 'sampler = "gp"'))
    spec = load_study_file(p)
    assert isinstance(open_study(spec).sampler, optuna.samplers.GPSampler)
    assert run_study(spec, n_trials=12).completed == 12
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert all(t.constraints for t in study.trials)  # set_constraint reached every trial
