"""The report's HTML tables: the Pareto front, and every trial with its state and reason.

Every cell is escaped (failure reasons carry a child's stderr) and in human units.
"""

from __future__ import annotations

import html

from optuna.trial import FrozenTrial, TrialState

from autoresearch.results import Figures, Results


def _row(cells: list[str], *, head: bool = False) -> str:
    tag = "th" if head else "td"
    return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"


def _knobs(t: FrozenTrial) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
    )


def front_table(res: Results) -> str:
    front = sorted(res.front(), key=lambda f: f.number)
    if not front:
        return "<p>No feasible completed trial yet.</p>"
    cols = [m for m, _ in res.objectives]
    rows = [_row(["trial", *cols, "measurement", "knobs"], head=True)]
    for f in front:
        rows.append(_row([f.label, *(f.fmt(c) for c in cols), f.note, _knobs(f.trial)]))
    return "<table>" + "\n".join(rows) + "</table>"


def _outcome(t: FrozenTrial, figs: dict[int, Figures], infeasible: set[int]) -> str:
    ua = t.user_attrs
    if t.state == TrialState.FAIL:
        return str(ua.get("fail_reason", "failed (no reason recorded)"))
    if t.state == TrialState.PRUNED:
        est = ua.get("screen_estimate")
        return "screened out by the trace simulator" + (f" ({est})" if est else "")
    if t.number in infeasible:
        over = [k for k, v in t.constraints.items() if v > 0]
        return "infeasible: over " + (", ".join(over) if over else "a constraint")
    if t.number in figs:
        return figs[t.number].note
    return t.state.name.lower()


def trials_table(res: Results) -> str:
    """Every trial in order: state, figures, what happened (failure reasons included), knobs."""
    trials = res.study.get_trials(deepcopy=False)
    if not trials:
        return "<p>No trials yet.</p>"
    figs = {f.number: f for f in res.figures + res.infeasible}
    infeasible = {f.number for f in res.infeasible}
    front = {f.number for f in res.front()}
    cols = [m for m, _ in res.objectives]
    rows = [_row(["trial", "state", *cols, "front", "outcome", "knobs"], head=True)]
    for t in trials:
        f = figs.get(t.number)
        label = f"{t.number} (baseline)" if t.user_attrs.get("baseline") else str(t.number)
        rows.append(
            _row(
                [
                    label,
                    t.state.name.lower(),
                    *(f.fmt(c) if f else "-" for c in cols),
                    "yes" if t.number in front else "",
                    _outcome(t, figs, infeasible),
                    _knobs(t),
                ]
            )
        )
    return "<table id='all-trials'>" + "\n".join(rows) + "</table>"
