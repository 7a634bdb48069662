"""Search efficiency: hypervolume by hand, replay of a measured table, and
benchmarks/search_efficiency.py's bookkeeping on a hand-made table (the benchmark is not a
test; this checks its costs, the reported front, and the cost to reach a target)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from ar_helpers import MAXMIN, REPO, space_of

from autoresearch import hypervolume
from autoresearch.replay import Row, Table
from autoresearch.space import Knob, Space

PATH = REPO / "benchmarks" / "search_efficiency.py"
spec = importlib.util.spec_from_file_location("search_efficiency", PATH)
assert spec is not None and spec.loader is not None
se = importlib.util.module_from_spec(spec)
sys.modules["search_efficiency"] = se  # dataclasses look their module up by name
spec.loader.exec_module(se)


def _objective(noise: float, cheap_cost: float = 0.25) -> se.Objective:
    space = Space(Path("t"), (Knob("x", low=0.0, high=1.0), Knob("m", choices=("a", "b"))), {})
    rows = [
        Row({"x": float(x), "m": m}, (10 * x + (m == "b"), 10 - 10 * x + (m == "a")))
        for x in np.linspace(0, 1, 11)
        for m in ("a", "b")
    ]
    return se.Objective(
        "t",
        space,
        Table(space, rows),
        ["maximize", "minimize"],
        [noise, noise],
        [1.0, 1.0],
        [noise, noise],
        cheap_cost,
        [None, None],
    )


def _bounds(obj: se.Objective) -> tuple[np.ndarray, np.ndarray]:
    loss = hypervolume.losses([r.values for r in obj.table.rows], obj.directions)
    return loss.min(axis=0), loss.max(axis=0)


def test_noise_free_replay_counts_one_probe_per_trial() -> None:
    obj = _objective(0.0)
    curve, saved = se.run(obj, "random", 0, 30, False, False, *_bounds(obj))
    assert [c for c, _ in curve] == list(range(1, 31)) and saved == 0
    hvs = [h for _, h in curve]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(hvs))
    rows = [r.values for r in obj.table.rows]
    best = hypervolume.hypervolume(hypervolume.losses(rows, obj.directions), *_bounds(obj))
    assert 0 < hvs[-1] <= best + 1e-12
    assert se.cost_to_reach(curve, hvs[-1]) <= 30
    assert se.cost_to_reach(curve, best + 1) == float("inf")
    assert se.hv_at(curve, 10) == hvs[9]


def test_racing_and_fidelity_change_the_cost() -> None:
    obj = _objective(0.2)
    racing, _ = se.run(obj, "tpe", 0, 30, True, False, *_bounds(obj))
    assert racing[-1][0] > 30  # some trials were measured more than once
    cheap, saved = se.run(obj, "tpe", 0, 30, False, True, *_bounds(obj))
    assert saved > 0
    assert cheap[-1][0] == pytest.approx(30 * 0.25 + (30 - saved))


def test_hypervolume_by_hand() -> None:
    # losses already in [0, 1] by the bounds (0, 1): reference 1.1 -> one point at 0 has 1.21
    lo, hi = np.zeros(2), np.ones(2)
    assert hypervolume.hypervolume(np.array([[0.0, 0.0]]), lo, hi) == pytest.approx(1.21)
    two = np.array([[0.0, 1.0], [1.0, 0.0]])  # two slivers: 1.1 x 0.1 each, 0.01 overlap
    assert hypervolume.hypervolume(two, lo, hi) == pytest.approx(0.21)
    # a maximized objective is negated: speed 10 vs 0 -> loss -10 is the best
    assert hypervolume.losses([[10.0, 1.0]], MAXMIN).tolist() == [[-10.0, 1.0]]
    hist = hypervolume.history(
        np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]]), [True, False, True], lo, hi
    )
    assert hist == pytest.approx([0.11, 0.11, 1.21])  # the infeasible one adds nothing


def test_replay_nearest_neighbour() -> None:
    space = space_of(
        Knob("cache_fraction", low=0.01, high=1.0, log=True),
        Knob("io_mode", choices=("direct", "mmap")),
    )
    t = Table(
        space,
        [
            Row({"cache_fraction": 0.01, "io_mode": "direct"}, (1.0,)),
            Row({"cache_fraction": 1.0, "io_mode": "direct"}, (2.0,)),
            Row({"cache_fraction": 0.1, "io_mode": "mmap"}, (3.0,)),
        ],
    )
    assert t.nearest({"cache_fraction": 0.5, "io_mode": "direct"}).values == (2.0,)
    assert t.nearest({"cache_fraction": 0.02, "io_mode": "direct"}).values == (1.0,)
    assert t.nearest({"cache_fraction": 0.1, "io_mode": "mmap"}).values == (3.0,)


def test_curves_put_random_beside_the_study() -> None:
    space = space_of(Knob("x", low=0.0, high=1.0))
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
    assert all(
        lo <= m <= hi for lo, m, hi in zip(c["random_lo"], c["random"], c["random_hi"], strict=True)
    )
    assert c["random"][-1] <= c["study"][-1] + 1e-12  # replay draws from the study's own trials
    assert len(hypervolume.figure(study, space).data) == 4
