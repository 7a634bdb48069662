"""Hypervolume of a study's front after each trial, and random search's expected curve beside it.

Hypervolume comes from Optuna's own implementation (optuna._hypervolume.compute_hypervolume,
what optuna.visualization.plot_hypervolume_history uses). Objectives are turned into losses
(maximized ones negated), scaled to [0, 1] by the range of the points compared, and measured
against the reference point 1.1 in every objective; infeasible trials add nothing.

Random search's curve for a real study cannot be measured without running it, so it is
replayed: random configs from the study's space are answered by the nearest measured trial of
the study (autoresearch.replay), median and quartiles over seeds. report.py draws it with one
call: `figure(study, space)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState

from autoresearch.replay import Row, Table, rows_from, sample_params
from autoresearch.space import Space

REFERENCE = 1.1  # reference point in scaled loss space: the worst point still adds a sliver


def losses(values: Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """(n, m) objective values -> losses to minimize."""
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return np.asarray(values, dtype=float).reshape(-1, len(directions)) * sign


def bounds(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-objective (low, high) used to scale every curve of one comparison alike."""
    return loss.min(axis=0), loss.max(axis=0)


def hypervolume(loss: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    if len(loss) == 0:
        return 0.0
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = (loss - lo) / span
    scaled = scaled[(scaled < REFERENCE).all(axis=1)]  # beyond the reference: no volume
    if len(scaled) == 0:
        return 0.0
    ref = np.full(loss.shape[1], REFERENCE)
    return float(compute_hypervolume(scaled, ref))


def history(
    loss: np.ndarray, feasible: Sequence[bool], lo: np.ndarray, hi: np.ndarray
) -> list[float]:
    """Hypervolume after each of the n trials (in order); infeasible ones add nothing."""
    out, kept = [], []
    for row, ok in zip(loss, feasible, strict=True):
        if ok:
            kept.append(row)
        out.append(hypervolume(np.array(kept).reshape(-1, loss.shape[1]), lo, hi))
    return out


def study_rows(study: optuna.Study) -> list[Row]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return rows_from(
        [t.params for t in trials],
        [t.values for t in trials],
        [all(v <= 0 for v in t.constraints.values()) for t in trials],
    )


def random_curve(
    table: Table, directions: Sequence[str], n: int, lo: np.ndarray, hi: np.ndarray, seeds: int = 5
) -> np.ndarray:
    """(3, n): median, 25th and 75th percentile of random search's hypervolume history."""
    runs = []
    for seed in range(seeds):
        rows = [table.nearest(p) for p in sample_params(table.space, n, seed)]
        loss = losses([r.values for r in rows], directions)
        runs.append(history(loss, [r.feasible for r in rows], lo, hi))
    return np.percentile(np.array(runs), [50, 25, 75], axis=0)


def curves(study: optuna.Study, space: Space, seeds: int = 5) -> dict[str, Any]:
    """The study's hypervolume history and random search's expected one, on one scale."""
    rows = study_rows(study)
    directions = [d.name.lower() for d in study.directions]
    if not rows:
        return {"n": [], "study": [], "random": [], "random_lo": [], "random_hi": []}
    loss = losses([r.values for r in rows], directions)
    lo, hi = bounds(loss)
    mine = history(loss, [r.feasible for r in rows], lo, hi)
    rand = random_curve(Table(space, rows), directions, len(rows), lo, hi, seeds)
    return {
        "n": list(range(1, len(rows) + 1)),
        "study": mine,
        "random": rand[0].tolist(),
        "random_lo": rand[1].tolist(),
        "random_hi": rand[2].tolist(),
    }


def figure(study: optuna.Study, space: Space) -> Any:
    """Plotly figure: the study's hypervolume history and random search's band beside it."""
    import plotly.graph_objects as go

    c = curves(study, space)
    fig = go.Figure()
    fig.add_scatter(
        x=c["n"],
        y=c["random_hi"],
        mode="lines",
        line={"width": 0},
        showlegend=False,
        hoverinfo="skip",
    )
    fig.add_scatter(
        x=c["n"],
        y=c["random_lo"],
        mode="lines",
        line={"width": 0},
        fill="tonexty",
        name="random search (25-75%)",
    )
    fig.add_scatter(
        x=c["n"], y=c["random"], mode="lines", name="random search (median)", line={"dash": "dash"}
    )
    fig.add_scatter(x=c["n"], y=c["study"], mode="lines+markers", name="this study")
    fig.update_layout(
        title="Hypervolume vs trials (random search replayed on this study's trials)",
        xaxis_title="complete trials",
        yaxis_title="hypervolume (scaled objectives)",
    )
    return fig
