"""The study file's `sampler`: one name -> one Optuna sampler, and the rule behind "auto".

Constraints reach every sampler through `Trial.set_constraint` (the loop sets one value per
[constraints] entry): Optuna 5's TPE, GP and NSGA-II read `trial.constraints` themselves, so no
`constraints_func` (deprecated in 5.0) is passed. Random search ignores constraints by design.

"auto" (the default; see choose_sampler): GP (Optuna's GPSampler: LogEHVI for several
objectives, a fitted noise term) for a budget of at most 300 trials over at most 4 categorical
knobs, TPE otherwise. Measured by benchmarks/search_efficiency.py on a replayed grid of real
trials: GP had the best hypervolume at 50-60 trials of every sampler on both objectives (see
README). Its fit costs seconds per trial, nothing next to a minutes-long probe, but grows ~n^3,
hence the budget limit. The GP needs torch (`pip install 'moe-autoresearch[gp]'`); without it
"auto" picks TPE and says why.
"""

from __future__ import annotations

import importlib.util
import warnings

import optuna

from autoresearch.errors import StudyFileError
from autoresearch.space import Space

SAMPLERS = ("tpe", "gp", "random", "nsga2", "auto")
# GP's cubic cost in trials and its weak categorical kernel: past these it loses to TPE.
GP_MAX_TRIALS = 300
GP_MAX_CATEGORICAL = 4  # the demo space has 4; the benchmark's grid space 3


def gp_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "scipy"))


def choose_sampler(name: str, space: Space, n_trials: int | None) -> tuple[str, str]:
    """(the concrete sampler, why). Only "auto" is resolved; other names pass through."""
    if name != "auto":
        return name, "set in the study file"
    categorical = sum(k.choices is not None for k in space.knobs)
    if n_trials is None or n_trials > GP_MAX_TRIALS:
        return "tpe", f"auto: budget {n_trials or 'open-ended'} > {GP_MAX_TRIALS} trials"
    if categorical > GP_MAX_CATEGORICAL:
        return "tpe", f"auto: {categorical} categorical knobs > {GP_MAX_CATEGORICAL}"
    if not gp_available():
        return "tpe", "auto: GP needs torch and scipy (pip install 'moe-autoresearch[gp]')"
    return "gp", f"auto: {n_trials} trials, {categorical} categorical knobs"


def make_sampler(
    name: str, *, seed: int | None, space: Space, n_trials: int | None, source: str = "study file"
) -> optuna.samplers.BaseSampler:
    """Build the named sampler ("auto" resolved by choose_sampler)."""
    if name not in SAMPLERS:
        raise StudyFileError(f"{source}: study.sampler must be one of {SAMPLERS}, got {name!r}")
    name, _why = choose_sampler(name, space, n_trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument warnings, once per study open
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "gp":
            if not gp_available():
                raise StudyFileError(
                    f"{source}: study.sampler = 'gp' needs torch and scipy; install them with "
                    "pip install 'moe-autoresearch[gp]', or use sampler = 'tpe'"
                )
            # Probe timings are noisy: the GP fits a noise term instead of interpolating.
            # warn_independent_sampling off: a conditional knob (prefetch_depth) is sampled at
            # random by design, and the warning would print on every trial.
            return optuna.samplers.GPSampler(
                seed=seed, deterministic_objective=False, warn_independent_sampling=False
            )
        # multivariate+group: conditional knobs (prefetch_depth only with prefetch) are modeled
        # jointly instead of independently; constant_liar keeps parallel workers apart.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True
        )
