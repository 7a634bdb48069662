"""A lookup table of measured trials that answers for any point of a space (nearest neighbour).

Used to replay a search without running the engine: benchmarks/search_efficiency.py replays a
measured grid, and autoresearch.hypervolume replays a study's own trials to draw random
search's expected curve. Distance: per knob, 0/1 for categorical values (and for a knob active
in one point but not the other), |a - b| on the knob's range (log range when the knob is log)
for numbers; ties go to the earlier row so a replay is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoresearch.space import Knob, Space


@dataclass(frozen=True)
class Row:
    params: dict[str, Any]
    values: tuple[float, ...]  # objective values, study order
    feasible: bool = True


@dataclass
class Table:
    space: Space
    rows: list[Row]

    def nearest(self, params: dict[str, Any]) -> Row:
        if not self.rows:
            raise ValueError("an empty table answers nothing")
        best, best_d = self.rows[0], math.inf
        for row in self.rows:
            d = sum(
                _distance(k, params.get(k.name), row.params.get(k.name)) for k in self.space.knobs
            )
            if d < best_d:
                best, best_d = row, d
        return best


def _distance(knob: Knob, a: Any, b: Any) -> float:
    if a is None or b is None:
        return 0.0 if a is b else 1.0
    if knob.choices is not None:
        return 0.0 if a == b else 1.0
    lo, hi = float(knob.low or 0), float(knob.high or 0)
    if knob.log and lo > 0:
        a, b, lo, hi = (math.log(max(float(x), 1e-300)) for x in (a, b, lo, hi))
    span = hi - lo
    return abs(float(a) - float(b)) / span if span > 0 else 0.0


def sample_params(space: Space, n: int, seed: int) -> list[dict[str, Any]]:
    """n points drawn as random search would draw them (Optuna's RandomSampler + the space)."""
    import optuna

    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" per curve
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        out = []
        for _ in range(n):
            trial = study.ask()
            out.append(space.suggest(trial))
            study.tell(trial, 0.0)
        return out
    finally:
        optuna.logging.set_verbosity(old)


def rows_from(
    params: Sequence[dict[str, Any]],
    values: Sequence[Sequence[float]],
    feasible: Sequence[bool] | None = None,
) -> list[Row]:
    feasible = feasible if feasible is not None else [True] * len(params)
    return [
        Row(dict(p), tuple(float(x) for x in v), bool(f))
        for p, v, f in zip(params, values, feasible, strict=True)
    ]
