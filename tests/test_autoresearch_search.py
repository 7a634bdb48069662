"""The search itself: sampler choice, racing, the cheap fidelity, hypervolume and replay."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from test_autoresearch_helpers import SPACES, tiny, write_study

from autoresearch import fidelity, hypervolume, racing, sampler
from autoresearch.errors import SpaceError, StudyFileError
from autoresearch.loop import run_study
from autoresearch.replay import Row, Table
from autoresearch.space import Knob, Space, load_space, to_config
from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file
from engine.errors import ConfigError

__all__ = ["tiny"]
MAXMIN = ["maximize", "minimize"]


def _space(*knobs: Knob) -> Space:
    return Space(path=Path("x.toml"), knobs=knobs, fixed={})


NUMERIC = _space(Knob("cache_fraction", low=0.02, high=0.8, log=True),
                 Knob("io_threads", low=1, high=8))  # fmt: skip
CATEGORICAL = _space(*(Knob(n, choices=("a", "b")) for n in "vwxyz"))  # 5 > 4


# --- sampler ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler),
     ("nsga2", optuna.samplers.NSGAIISampler)],
)  # fmt: skip
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


def test_samplers_respect_constraints_from_set_constraint() -> None:
    """Optuna 5 samplers read Trial.set_constraint (no constraints_func): TPE stays feasible."""
    free, bound = _feasible_share(False), _feasible_share(True)
    assert bound >= 0.4 and bound > 2 * free


# --- racing ----------------------------------------------------------------------------------


SPEC = racing.RacingSpec(max_repeats=3, z=2.0, min_noise=0.0)


def test_racing_verdicts_by_hand() -> None:
    others = [[10.0, 100.0]]  # max speed, min memory
    noise = [0.05, 0.0]  # 5% speed noise: +-10% at z=2 on one probe
    assert racing.verdict([[5.0, 200.0]], others, MAXMIN, noise, SPEC) == "dominated"
    assert racing.verdict([[20.0, 50.0]], others, MAXMIN, noise, SPEC) == "front"
    # 9.5 tok/s at the same memory: 9.5 x 1.1 = 10.45 could beat 10 -> measure again
    assert racing.verdict([[9.5, 100.0]], others, MAXMIN, noise, SPEC) == "repeat"
    # four probes halve the interval (+-5%): 9.5 x 1.05 < 10 -> dominated
    assert racing.verdict([[9.5, 100.0]] * 4, others, MAXMIN, noise, SPEC) == "dominated"
    assert racing.verdict([[9.5, 100.0]] * 3, others, MAXMIN, [0.2, 0], SPEC) == "budget"
    assert racing.verdict([[1.0, 1.0]], [], MAXMIN, noise, SPEC) == "front"


class _Res:
    def __init__(self, v: float, error: str | None = None) -> None:
        self.metrics = {"decode_tok_s": v, "memory_bytes": 100.0, "spread": {}, "samples": {}}
        self.error, self.wall_s = error, 1.0


def test_race_repeats_only_while_uncertain_and_merges_medians() -> None:
    seq = iter([9.5, 9.0, 9.2, 99.0])  # 10% noise: +-20%/sqrt(n) keeps each median in doubt
    results, final = racing.race(lambda: _Res(next(seq)), [[10.0, 100.0]], MAXMIN,
                                 ["decode_tok_s", "memory_bytes"], [0.1, 0.0], SPEC)  # fmt: skip
    assert final == "budget" and len(results) == 3  # max_repeats, never the 4th value
    merged = racing.merge(results, ["decode_tok_s", "memory_bytes"])
    assert merged["decode_tok_s"] == 9.2 and merged["samples"]["decode_tok_s"] == [9.5, 9.0, 9.2]
    results, final = racing.race(lambda: _Res(1.0, "crash"), [], MAXMIN,
                                 ["decode_tok_s", "memory_bytes"], [0.05, 0.0], SPEC)  # fmt: skip
    assert len(results) == 1 and results[0].error == "crash"


@pytest.mark.parametrize(
    ("table", "match"),
    [("max_repeats = 0", "max_repeats must be an integer >= 1"),
     ('max_repeats = "3"', "max_repeats must be an integer"),
     ("z = -1", "racing.z must be a number >= 0"),
     ("enabled = 1", "racing.enabled must be true or false"),
     ("max_repeat = 3", "unknown key.*racing.max_repeat")],
)  # fmt: skip
def test_racing_table_errors(tmp_path: Path, table: str, match: str) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text() + f"\n[racing]\n{table}\n")
    with pytest.raises(StudyFileError, match=match):
        load_study_file(p)


def test_racing_in_the_loop_records_measurements(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """Stand-in probe: every trial equals the baseline, so its front membership is up to the
    noise and it gets max_repeats measurements; the baseline keeps its fixed repeats."""
    p = write_study(tmp_path, store=tiny[1])
    p.write_text(p.read_text() + "\n[racing]\nmax_repeats = 2\n")
    spec = load_study_file(p)
    run_study(spec, n_trials=3)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    trials = study.trials
    assert [t.user_attrs["measurements"] for t in trials] == [3, 2, 2]
    assert trials[1].user_attrs["race"] == "budget"
    assert trials[1].user_attrs["samples"]["decode_tok_s"] == [1.0, 1.0]
    # the report's hypervolume curves work on a study the loop made (baseline included)
    c = hypervolume.curves(study, spec.space, seeds=2)
    assert len(c["study"]) == len(c["random"]) == 3


# --- cheap fidelity --------------------------------------------------------------------------


SUITE = textwrap.dedent(
    """
    warmup_tokens = 4
    [[prompts]]
    ids = [1, 2, 3]
    decode_tokens = 64
    [[prompts]]
    ids = [4, 5]
    decode_tokens = 64
    """
)


def test_cheap_suite_cuts_prompts_and_tokens(tmp_path: Path) -> None:
    import tomllib

    full = tmp_path / "suite.toml"
    full.write_text(SUITE)
    out = fidelity.cheap_suite(full, tmp_path / "c.toml", prompts=1, decode_tokens=12)
    doc = tomllib.loads(out.read_text())
    assert doc["prompts"] == [{"ids": [1, 2, 3], "decode_tokens": 12}]
    with pytest.raises(fidelity.FidelityError, match="must exceed the suite's warmup_tokens"):
        fidelity.cheap_suite(full, tmp_path / "c.toml", prompts=1, decode_tokens=4)
    (tmp_path / "empty.toml").write_text("seed = 0\n")
    with pytest.raises(fidelity.FidelityError, match=r"no \[\[prompts\]\]"):
        fidelity.cheap_suite(tmp_path / "empty.toml", out, prompts=1, decode_tokens=12)


def test_promote_only_candidates_that_could_reach_the_front() -> None:
    seen = [[10.0, 100.0], [5.0, 50.0], [2.0, 20.0]]
    tol = [0.05, 0.05]
    assert fidelity.promote([1.0, 1.0], seen[:2], MAXMIN, tol)  # warmup: always
    assert not fidelity.promote([4.0, 60.0], seen, MAXMIN, tol)  # (5, 50) beats it clearly
    assert fidelity.promote([4.9, 51.0], seen, MAXMIN, tol)  # within the tolerance
    assert fidelity.promote([20.0, 200.0], seen, MAXMIN, tol)  # a new extreme


CHEAP_STAND_IN = textwrap.dedent(
    """
    import json, pathlib, sys
    here, suite = pathlib.Path(sys.argv[1]), sys.argv[2]
    cheap = "autoresearch-cheap" in suite
    n = here / ("n_cheap" if cheap else "n_full")
    k = int(n.read_text()) if n.exists() else 0
    n.write_text(str(k + 1))
    # every later candidate is worse in every objective: the cheap probe can see it
    m = {"decode_tok_s": 100.0 - 10 * k, "memory_bytes": 100.0 + 10 * k,
         "kl_mean": 1.0 + k, "spread": {}, "samples": {}, "config": {}, "machine": {}}
    print(json.dumps(m))
    """
)


def test_cheap_probe_prunes_and_counts_saved(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "cheap_stand_in.py").write_text(CHEAP_STAND_IN)
    text = p.read_text().split("[probe]")[0].replace("baseline_repeats = 3", "")
    text += (f'[probe]\nprobe_command = ["{{python}}", "{tmp_path / "cheap_stand_in.py"}", '
             f'"{tmp_path}", "{{suite}}"]\n[constraints]\nmemory_bytes = {{ max = 1e12 }}\n'
             '[fidelity]\nscreen = "probe"\nprobe_decode_tokens = 12\n')  # fmt: skip
    p.write_text(text)
    spec = load_study_file(p)
    summary = run_study(spec, n_trials=7)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    states = [t.state for t in study.trials]
    # baseline + 3 warm-up promotions measured for real; the 3 later, worse ones pruned
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 3
    assert fidelity.saved(study) == 3 and summary.screened == 3
    assert study.trials[5].user_attrs["fidelity"] == "cheap only"
    assert study.trials[5].user_attrs[fidelity.CHEAP_KEY]["decode_tok_s"] == 60.0  # 5th cheap call
    assert (tmp_path / "n_full").read_text() == "4"


def test_fidelity_table_errors(tmp_path: Path) -> None:
    p = write_study(tmp_path, store=tmp_path)
    base = p.read_text()
    p.write_text(base + '\n[fidelity]\nscreen = "short"\n')
    with pytest.raises(StudyFileError, match="'none', 'trace' or 'probe'"):
        load_study_file(p)
    p.write_text(base + '\n[fidelity]\nscreen = "probe"\nprobe_prompts = 0\n')
    with pytest.raises(StudyFileError, match=r"fidelity\.probe_prompts must be an integer >= 1"):
        load_study_file(p)


# --- hypervolume and replay ------------------------------------------------------------------


def test_hypervolume_by_hand() -> None:
    # losses already in [0, 1] by the bounds (0, 1): reference 1.1 -> one point at 0 has 1.21
    lo, hi = np.zeros(2), np.ones(2)
    assert hypervolume.hypervolume(np.array([[0.0, 0.0]]), lo, hi) == pytest.approx(1.21)
    two = np.array([[0.0, 1.0], [1.0, 0.0]])  # two slivers: 1.1 x 0.1 each, 0.01 overlap
    assert hypervolume.hypervolume(two, lo, hi) == pytest.approx(0.21)
    # a maximized objective is negated: speed 10 vs 0 -> loss -10 is the best
    assert hypervolume.losses([[10.0, 1.0]], MAXMIN).tolist() == [[-10.0, 1.0]]
    hist = hypervolume.history(np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]),
                               [True, False, True], lo, hi)  # fmt: skip
    assert hist == pytest.approx([0.11, 0.11, 1.21])  # the infeasible one adds nothing


def test_replay_nearest_neighbour() -> None:
    space = _space(Knob("cache_fraction", low=0.01, high=1.0, log=True),
                   Knob("io_mode", choices=("direct", "mmap")))  # fmt: skip
    t = Table(space, [Row({"cache_fraction": 0.01, "io_mode": "direct"}, (1.0,)),
                      Row({"cache_fraction": 1.0, "io_mode": "direct"}, (2.0,)),
                      Row({"cache_fraction": 0.1, "io_mode": "mmap"}, (3.0,))])  # fmt: skip
    assert t.nearest({"cache_fraction": 0.5, "io_mode": "direct"}).values == (2.0,)
    assert t.nearest({"cache_fraction": 0.02, "io_mode": "direct"}).values == (1.0,)
    assert t.nearest({"cache_fraction": 0.1, "io_mode": "mmap"}).values == (3.0,)


def test_curves_put_random_beside_the_study() -> None:
    space = _space(Knob("x", low=0.0, high=1.0))
    study = optuna.create_study(directions=MAXMIN)
    for x in np.linspace(0, 1, 12):
        study.add_trial(
            optuna.create_trial(
                params={"x": float(x)},
                values=[x, x * x],
                distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            )
        )
    c = hypervolume.curves(study, space, seeds=3)
    assert len(c["study"]) == len(c["random"]) == 12
    assert all(a <= b + 1e-12 for a, b in zip(c["study"], c["study"][1:], strict=False))
    assert all(lo <= m <= hi for lo, m, hi in zip(c["random_lo"], c["random"], c["random_hi"],
                                                  strict=True))  # fmt: skip
    assert c["random"][-1] <= c["study"][-1] + 1e-12  # replay draws from the study's own trials
    assert len(hypervolume.figure(study, space).data) == 4


# --- experts_per_token relative to the model's top-k -----------------------------------------


def test_experts_fraction_follows_top_k() -> None:
    """The demo space on a tiny mixtral (top-k 4) never asks for more than 4 experts."""
    space = load_space(SPACES / "demo.toml")
    knob = next(k for k in space.knobs if k.name == "experts_fraction")
    for frac in (knob.low, 0.75, knob.high):
        top4 = to_config({"experts_fraction": frac}, expert_bytes=1 << 20, top_k=4)
        top8 = to_config({"experts_fraction": frac}, expert_bytes=1 << 20, top_k=8)
        assert 2 <= top4.experts_per_token <= 4 and 4 <= top8.experts_per_token <= 8
    assert to_config({"experts_per_token": 8}, expert_bytes=1, top_k=4).experts_per_token == 4
    with pytest.raises(ConfigError, match="needs the model's top-k"):
        to_config({"experts_fraction": 0.5}, expert_bytes=1)


@pytest.mark.parametrize(
    ("body", "match"),
    [("[knobs.experts_fraction]\nlow = 0.0\nhigh = 1.0\n", "experts_fraction must be a number"),
     ("[knobs.experts_fraction]\nlow = 0.5\nhigh = 3.0\n", "in \\(0, 2\\]"),
     ("[knobs.experts_fraction]\nchoices = [0.5, 9]\n", "experts_fraction must be"),
     ("[fixed]\nexperts_fraction = -1\n[knobs.io_threads]\nlow = 1\nhigh = 2\n",
      "experts_fraction must be"),
     ("[knobs.experts_fraction]\nlow = 0.5\nhigh = 1.0\n[knobs.experts_per_token]\nlow = 1\n"
      "high = 2\n", "not both")],
)  # fmt: skip
def test_experts_fraction_errors(tmp_path: Path, body: str, match: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(body)
    with pytest.raises(SpaceError, match=match):
        load_space(p)


def test_study_file_reads_sampler_racing_and_probe_fidelity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text().replace('sampler = "random"', 'sampler = "auto"')
                 + "\n[racing]\nmax_repeats = 4\n"
                 + '[fidelity]\nscreen = "probe"\nprobe_prompts = 2\n')  # fmt: skip
    spec = load_study_file(p)
    assert spec.sampler == "auto" and spec.racing == racing.RacingSpec(max_repeats=4)
    assert (spec.screen, spec.probe_prompts, spec.probe_decode_tokens) == ("probe", 2, 16)
    # io.toml: 4 categorical knobs, 2 trials: auto -> GP where torch is, TPE where it is not
    monkeypatch.setattr(sampler, "gp_available", lambda: False)
    assert isinstance(open_study(spec).sampler, optuna.samplers.TPESampler)
    if sampler.importlib.util.find_spec("torch") is not None:
        monkeypatch.setattr(sampler, "gp_available", lambda: True)
        assert isinstance(open_study(spec).sampler, optuna.samplers.GPSampler)
    p.write_text(p.read_text().replace("max_repeats = 4", "enabled = false"))
    assert load_study_file(p).racing is None


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
