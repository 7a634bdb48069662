"""benchmarks/search_efficiency.py's replay on a hand-made table (the benchmark is not a test;
this checks its bookkeeping: costs, the reported front, and the cost to reach a target)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

from autoresearch.hypervolume import hypervolume, losses
from autoresearch.replay import Row, Table
from autoresearch.space import Knob, Space

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "search_efficiency.py"
spec = importlib.util.spec_from_file_location("search_efficiency", PATH)
assert spec is not None and spec.loader is not None
se = importlib.util.module_from_spec(spec)
sys.modules["search_efficiency"] = se  # dataclasses look their module up by name
spec.loader.exec_module(se)


def _objective(noise: float, cheap_cost: float = 0.25) -> se.Objective:
    space = Space(Path("t"), (Knob("x", low=0.0, high=1.0), Knob("m", choices=("a", "b"))), {})
    rows = [Row({"x": float(x), "m": m}, (10 * x + (m == "b"), 10 - 10 * x + (m == "a")))
            for x in np.linspace(0, 1, 11) for m in ("a", "b")]  # fmt: skip
    return se.Objective("t", space, Table(space, rows), ["maximize", "minimize"],
                        [noise, noise], [1.0, 1.0], [noise, noise], cheap_cost,
                        [None, None])  # fmt: skip


def _bounds(obj: se.Objective) -> tuple[np.ndarray, np.ndarray]:
    loss = losses([r.values for r in obj.table.rows], obj.directions)
    return loss.min(axis=0), loss.max(axis=0)


def test_noise_free_replay_counts_one_probe_per_trial() -> None:
    obj = _objective(0.0)
    curve, saved = se.run(obj, "random", 0, 30, False, False, *_bounds(obj))
    assert [c for c, _ in curve] == list(range(1, 31)) and saved == 0
    hvs = [h for _, h in curve]
    assert all(a <= b + 1e-12 for a, b in itertools.pairwise(hvs))
    best = hypervolume(losses([r.values for r in obj.table.rows], obj.directions), *_bounds(obj))
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
