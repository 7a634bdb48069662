"""Crash-safety, Ctrl-C and bad-input holes found in review, each pinned by the input it needs."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_autoresearch_helpers import SPACES, process_gone, tiny, write_study

from autoresearch.cli import main
from autoresearch.errors import IncompatibleStudy, SpaceError, StudyFileError
from autoresearch.loop import run_study
from autoresearch.space import Space, load_space
from autoresearch.storage import open_study, recover_abandoned
from autoresearch.study_file import load_study_file
from autoresearch.trial import run_probe
from engine.config import EngineConfig

__all__ = ["tiny"]


def _load(p: Path) -> optuna.Study:
    spec = load_study_file(p)
    return optuna.load_study(study_name=spec.name, storage=spec.storage)


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


def test_noise_floor_survives_death_right_after_baseline_tell(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    _after_tell(monkeypatch, SystemExit(9))
    with pytest.raises(SystemExit):
        run_study(load_study_file(p), n_trials=1)
    study = _load(p)
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
    assert [t.state for t in _load(p).trials] == [TrialState.COMPLETE]


def test_ctrl_c_mid_suggest_requeues_the_exact_baseline(
    tmp_path: Path, tiny: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tiny[1])
    spec = load_study_file(p)

    def interrupted(self: Space, trial: optuna.Trial, only: set[str] | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Space, "suggest", interrupted)
    assert run_study(spec, n_trials=1).interrupted
    retry = _load(p).trials[1]
    assert retry.state == TrialState.WAITING and retry.user_attrs["baseline"] is True
    monkeypatch.undo()
    run_study(spec, n_trials=1)
    # The retry measured the engine default again, not a fresh sample of the baseline's knobs.
    ran = _load(p).trials[1]
    assert ran.state == TrialState.COMPLETE and ran.user_attrs["retry_of"] == 0
    assert ran.params == spec.space.baseline_params() != {}
    budget = ("memory_budget_bytes", "expert_memory_fraction")  # the study's, not a knob
    knobs = {k: v for k, v in ran.user_attrs["config"].items() if k not in budget}
    assert knobs == EngineConfig().to_dict()


def _abandoned_trial(study: optuna.Study, pid: int) -> int:
    trial = study.ask()
    trial.suggest_int("io_threads", 1, 16)
    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": pid})
    return trial.number


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


@pytest.mark.parametrize(
    ("when", "needle"),
    [
        ("{ prefetch = { lt = 3 } }", "prefetch"),
        ('{ prefetch = { in = "none" } }', "list"),
        ('{ io_threads = { gt = "2" } }', "number"),
    ],
)
def test_bad_condition_argument_is_refused_at_load(tmp_path: Path, when: str, needle: str) -> None:
    p = tmp_path / "space.toml"
    p.write_text(
        '[knobs.prefetch]\nchoices = ["none", "next_layer"]\n'
        "[knobs.io_threads]\nlow = 1\nhigh = 8\n"
        f"[knobs.prefetch_depth]\nlow = 1\nhigh = 2\nwhen = {when}\n"
    )
    with pytest.raises(SpaceError, match=needle):
        load_space(p)


@pytest.mark.parametrize(
    ("top", "study", "needle"),
    [
        ('objectives = ["decode_tok_s"]', "", "objectives[0]"),
        ("probe = 1", "", "[probe]"),
        ("", "space = 5", "study.space"),
        ("", 'cold = "false"', "study.cold"),
        ("", "storage = 5", "study.storage"),
    ],
)
def test_malformed_study_values_are_one_line_errors(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    top: str, study: str, needle: str,
) -> None:  # fmt: skip
    p = write_study(tmp_path, store=tiny[1], kind=None)
    key = study.split(" = ")[0]
    lines = [ln for ln in p.read_text().splitlines() if not (key and ln.startswith(key + " = "))]
    text = "\n".join(lines).replace("[study]\n", f"[study]\n{study}\n", 1)
    p.write_text(f"{top}\n{text}")
    assert main(["status", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err


def test_failed_baseline_is_measured_again_by_the_next_run(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    # Without a complete baseline there is no noise floor and confirm refuses; confirm says
    # "run first", so the next run must actually measure it.
    p = write_study(tmp_path, store=tiny[1], kind="crash")
    run_study(load_study_file(p), n_trials=1)
    p.write_text(p.read_text().replace('"crash"', '"ok"'))
    run_study(load_study_file(p), n_trials=1)
    trials = _load(p).trials
    assert trials[0].state == TrialState.FAIL
    assert trials[1].state == TrialState.COMPLETE and trials[1].user_attrs["baseline"] is True
    assert "noise_floor" in _load(p).user_attrs


def test_every_family_the_engine_synthesizes_is_allowed(tmp_path: Path) -> None:
    from engine.synth_generic import make_config, synth_families

    p = tmp_path / "s.toml"
    for family in synth_families():  # each family the engine has a tiny config for
        make_config(family)  # ... and can build
        p.write_text(
            f'[study]\nspace = "{SPACES / "io.toml"}"\n[model]\nsynth = {{ family = "{family}" }}\n'
        )
        assert load_study_file(p).synth == {"family": family, "preset": "tiny", "seed": 0}
    p.write_text(p.read_text().replace(f'"{family}"', '"qwen9_moe"'))
    with pytest.raises(StudyFileError, match=r"model\.synth\.family must be one of"):
        load_study_file(p)


@pytest.mark.parametrize(
    ("where", "line", "needle"),
    [
        ("study", "n_trails = 50", "study.n_trails"),
        ("model", 'storee = "x"', "model.storee"),
        ("synth", ', famliy = "x"', "model.synth.famliy"),
        ("end", '[fidelity]\nscrean = "trace"', "fidelity.screan"),
        ("end", '[probe]\nsuit = "x.toml"', "probe.suit"),
    ],
)
def test_misspelt_study_key_is_refused(tmp_path: Path, where: str, line: str, needle: str) -> None:
    # A typo'd key was silently ignored: the study ran with the default instead.
    at = {k: line if k == where else "" for k in ("study", "model", "synth", "end")}
    p = tmp_path / "s.toml"
    p.write_text(
        f'[study]\nspace = "{SPACES / "io.toml"}"\n{at["study"]}\n'
        f'[model]\nsynth = {{ family = "olmoe"{at["synth"]} }}\n{at["model"]}\n{at["end"]}\n'
    )
    with pytest.raises(StudyFileError, match=re.escape(needle)):
        load_study_file(p)


@pytest.mark.parametrize(
    ("model", "needle"),
    [("path = 5", "model.path"), ('synth = { family = "olmoe", seed = "x" }', "model.synth.seed")],
)
def test_bad_model_value_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, needle: str
) -> None:
    p = tmp_path / "s.toml"
    p.write_text(f'[study]\nspace = "{SPACES / "io.toml"}"\n[model]\n{model}\n')
    assert main(["status", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err


@pytest.mark.parametrize(
    "text",
    [
        '[fixed]\ncache_fraction = "big"\n[knobs.io_threads]\nlow = 1\nhigh = 2\n',
        "[knobs.cache_fraction]\nchoices = [0.5, 2.0]\n",
        '[knobs.cache_fraction]\nchoices = ["half"]\n',
    ],
)
def test_cache_fraction_outside_0_1_is_refused_everywhere(tmp_path: Path, text: str) -> None:
    p = tmp_path / "space.toml"
    p.write_text(text)
    with pytest.raises(SpaceError, match=r"cache_fraction must (be a number in|lie in) \[0, 1\]"):
        load_space(p)


def test_fraction_range_with_integer_bounds_is_still_a_float_range(tmp_path: Path) -> None:
    # TOML `low = 0` / `high = 1` are ints; a fraction knob must not collapse to {0, 1}.
    p = tmp_path / "space.toml"
    p.write_text("[knobs.cache_fraction]\nlow = 0\nhigh = 1\n")
    space = load_space(p)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [space.suggest(study.ask())["cache_fraction"] for _ in range(5)]
    assert all(0 < v < 1 for v in values), values
