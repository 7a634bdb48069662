"""`autoresearch status`: how far a study is and what it has found, as grep-able lines."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import TrialState

from autoresearch.display import pareto_front
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec


def status_lines(spec: StudySpec) -> list[str]:
    study = open_study(spec, create=False)
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    lines = [
        f"study: {spec.name}",
        f"storage: {spec.storage}",
        f"trials: {len(trials)}",
        f"complete: {counts[TrialState.COMPLETE]}",
        f"failed: {counts[TrialState.FAIL]}",
        f"running: {counts[TrialState.RUNNING]}",
        f"waiting: {counts[TrialState.WAITING]}",
    ]
    feasible = [t for t in trials if t.state == TrialState.COMPLETE and _feasible(t)]
    lines.append(f"feasible: {len(feasible)}")
    for i, (metric, direction) in enumerate(spec.objectives):
        if not feasible:
            lines.append(f"best {metric}: none yet")
            continue
        pick = max if direction == "maximize" else min
        best = pick(feasible, key=lambda t, i=i: t.values[i])
        spread = best.user_attrs.get("spread", {}).get(metric)
        pm = f" ± {spread:.4g}" if isinstance(spread, int | float) else ""
        lines.append(f"best {metric}: {best.values[i]:.6g}{pm} (trial {best.number}, {direction})")
    lines.append(f"pareto front: {', '.join(str(t.number) for t in pareto_front(study)) or '-'}")
    floor = study.user_attrs.get("noise_floor")
    if floor:
        for metric, _ in spec.objectives:
            if metric in floor:
                f = floor[metric]
                lines.append(
                    f"noise floor {metric}: ± {f['spread']:.4g} ({100 * f['relative']:.1f}%)"
                )
    else:
        lines.append("noise floor: not measured yet (the baseline trial has not completed)")
    for t in trials:
        if t.state == TrialState.FAIL:
            lines.append(f"failed trial {t.number}: {t.user_attrs.get('fail_reason', '?')}")
    return lines


def _feasible(t: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())
