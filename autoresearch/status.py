"""`autoresearch status`: how far a study is and what it has found, as grep-able lines.

The figures are the ones `show` prints (results.py: confirmed where present, one Pareto
front), in human units.
"""

from __future__ import annotations

from collections import Counter

from optuna.trial import TrialState

from autoresearch import format as fmt
from autoresearch.results import load_results
from autoresearch.study_file import StudySpec


def status_lines(spec: StudySpec) -> list[str]:
    res = load_results(spec)
    trials = res.study.get_trials(deepcopy=False)
    counts = Counter(t.state for t in trials)
    lines = [
        f"study: {spec.name}",
        f"storage: {spec.storage}",
        f"trials: {len(trials)}",
        f"complete: {counts[TrialState.COMPLETE]}",
        f"failed: {counts[TrialState.FAIL]}",
        f"running: {counts[TrialState.RUNNING]}",
        f"waiting: {counts[TrialState.WAITING]}",
        f"feasible: {len(res.figures)}",
    ]
    confirmed = sum(f.confirmed is not None for f in res.figures)
    lines.append(f"confirmed: {confirmed}" if confirmed else "confirmed: none (run confirm)")
    for (metric, direction), best in zip(res.objectives, res.best().values(), strict=True):
        if best is None:
            lines.append(f"best {metric}: none yet")
            continue
        ratio = best.ratio.get(metric)
        vs = f", {fmt.ratio(ratio)} baseline" if ratio is not None else ""
        lines.append(
            f"best {metric}: {best.fmt(metric)} (trial {best.label}, {direction}{vs}; "
            f"{'confirmed' if best.confirmed else 'unconfirmed'})"
        )
    front = sorted(res.front(), key=lambda f: f.number)
    lines.append(f"pareto front: {', '.join(f.label for f in front) or '-'}")
    floor = res.noise_floor()
    if floor:
        for metric, _ in spec.objectives:
            if metric in floor:
                f = floor[metric]
                lines.append(
                    f"noise floor {metric}: ± {fmt.metric(metric, f['spread'])} "
                    f"({fmt.share(f['relative'])})"
                )
    else:
        lines.append("noise floor: not measured yet (the baseline trial has not completed)")
    for t in trials:
        if t.state == TrialState.FAIL:
            lines.append(f"failed trial {t.number}: {t.user_attrs.get('fail_reason', '?')}")
    return lines
