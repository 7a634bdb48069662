"""Adaptive repeats (racing): measure a trial again only while noise could change its verdict.

A trial gets one measurement. With the study's noise floor (relative spread per metric, from
the repeated baseline) each objective's value is an interval of +-z x spread / sqrt(n). Then:
- dominated: even its optimistic corner is dominated by a measured trial -> stop, it is not on
  the front whatever the noise did;
- front: even its pessimistic corner is dominated by nobody -> stop, it is on the front;
- otherwise its front membership is up to the noise -> one more measurement, until max_repeats.
The trial's user attr `measurements` says how many probes it got, `race` the verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autoresearch.errors import StudyFileError
from autoresearch.study_parts import key_text

Direction = Literal["maximize", "minimize"]
Verdict = Literal["dominated", "front", "repeat", "budget"]


@dataclass(frozen=True)
class RacingSpec:
    """`[racing]` in the study file."""

    max_repeats: int = 3  # most probes one trial may get
    z: float = 2.0  # interval half-width in noise-floor spreads (2 ~ 95% for Gaussian noise)
    min_noise: float = 0.01  # relative spread assumed when the floor says less (or is unknown)


def parse_racing(path: Any, table: Any) -> RacingSpec | None:
    """The study file's [racing] table -> RacingSpec; None when absent or enabled = false."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise StudyFileError(f"{path}: [racing] must be a table (max_repeats, z, min_noise)")
    bad = sorted(set(table) - {"enabled", "max_repeats", "z", "min_noise"})
    if bad:
        raise StudyFileError(
            f"{path}: unknown key(s) {', '.join('racing.' + key_text(b) for b in bad)}; "
            "[racing] may hold enabled, max_repeats, z, min_noise"
        )
    if table.get("enabled", True) is False:
        return None
    if not isinstance(table.get("enabled", True), bool):
        raise StudyFileError(f"{path}: racing.enabled must be true or false")
    n = table.get("max_repeats", 3)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise StudyFileError(f"{path}: racing.max_repeats must be an integer >= 1, got {n!r}")
    for key in ("z", "min_noise"):
        v = table.get(key, 1.0)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise StudyFileError(f"{path}: racing.{key} must be a number >= 0, got {v!r}")
    return RacingSpec(
        max_repeats=n, z=float(table.get("z", 2.0)), min_noise=float(table.get("min_noise", 0.01))
    )


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[Direction]) -> bool:
    """a is at least as good as b everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if (x < y) if d == "maximize" else (x > y):
            return False
        better = better or x != y
    return better


def shifted(
    values: Sequence[float], directions: Sequence[Direction], rel: Sequence[float], sign: int
) -> list[float]:
    """sign=+1: the optimistic corner (each value improved by rel x |value|); -1 pessimistic."""
    out = []
    for v, d, r in zip(values, directions, rel, strict=True):
        step = sign * r * abs(v)
        out.append(v + step if d == "maximize" else v - step)
    return out


def could_be_on_front(
    values: Sequence[float],
    others: Sequence[Sequence[float]],
    directions: Sequence[Direction],
    rel: Sequence[float],
) -> bool:
    """No other point dominates the optimistic corner of `values`."""
    best = shifted(values, directions, rel, +1)
    return not any(dominates(o, best, directions) for o in others)


def verdict(
    samples: Sequence[Sequence[float]],
    others: Sequence[Sequence[float]],
    directions: Sequence[Direction],
    noise: Sequence[float],
    spec: RacingSpec,
) -> Verdict:
    """What to do after len(samples) measurements of one trial (rows: one probe each)."""
    n = len(samples)
    values = combine(samples)
    half = [spec.z * max(s, spec.min_noise) / n**0.5 for s in noise]
    if not could_be_on_front(values, others, directions, half):
        return "dominated"
    worst = shifted(values, directions, half, -1)
    if not any(dominates(o, worst, directions) for o in others):
        return "front"
    return "budget" if n >= spec.max_repeats else "repeat"


def combine(samples: Sequence[Sequence[float]]) -> list[float]:
    """Per-objective median of the measurements (robust to one disturbed probe)."""
    return [float(statistics.median(col)) for col in zip(*samples, strict=True)]


def noise_of(study_noise: dict[str, Any], metrics: Sequence[str]) -> list[float]:
    """Relative spread per objective from the study's `noise_floor` user attr (0 if unknown)."""
    return [float((study_noise.get(m) or {}).get("relative", 0.0)) for m in metrics]


def race(
    measure: Any,
    others: Sequence[Sequence[float]],
    directions: Sequence[Direction],
    metrics: Sequence[str],
    noise: Sequence[float],
    spec: RacingSpec,
) -> tuple[list[Any], Verdict]:
    """Call measure() (-> ProbeResult) until the verdict is not "repeat"; stop on an error.

    Returns every result (the last may carry the error) and the final verdict.
    """
    results: list[Any] = []
    samples: list[list[float]] = []
    while True:
        res = measure()
        results.append(res)
        if res.error is not None:
            return results, "budget"
        samples.append([float(res.metrics[m]) for m in metrics])
        v = verdict(samples, others, directions, noise, spec)
        if v != "repeat":
            return results, v


def merge(results: Sequence[Any], metrics: Sequence[str]) -> dict[str, Any]:
    """One metrics dict from several probes: medians of `metrics`, raw values under samples."""
    base = dict(results[0].metrics)
    if len(results) == 1:
        return base
    samples = dict(base.get("samples") or {})
    spread = dict(base.get("spread") or {})
    for m in metrics:
        col = [float(r.metrics[m]) for r in results]
        base[m] = float(statistics.median(col))
        samples[m] = col
        spread[m] = float(statistics.stdev(col))
    base["samples"], base["spread"] = samples, spread
    return base


def race_trial(
    study: Any,
    trial: Any,
    objectives: Sequence[tuple[str, Direction]],
    spec: RacingSpec,
    measure: Any,
) -> Any:
    """Race one trial against the study's feasible complete trials; the merged ProbeResult.

    Records user attrs `measurements` (probes run) and `race` (the final verdict).
    """
    from optuna.trial import TrialState

    names = [m for m, _ in objectives]
    directions = [d for _, d in objectives]
    others = [
        t.values
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(v <= 0 for v in t.constraints.values())
    ]
    noise = noise_of(study.user_attrs.get("noise_floor", {}), names)
    results, final = race(measure, others, directions, names, noise, spec)
    trial.set_user_attr("measurements", len(results))
    trial.set_user_attr("race", final)
    last = results[-1]
    if last.error is not None:
        return last
    last.metrics = merge(results, names)
    last.wall_s = sum(r.wall_s for r in results)
    return last
