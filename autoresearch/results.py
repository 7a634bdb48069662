"""What a study has measured, per trial: the figures show/export/report print and plot.

A trial's figures are its re-measured (`autoresearch confirm`) medians when it has them, else
its single in-loop measurement, flagged "unconfirmed: single measurement". Optuna refuses user
attrs on finished trials, so confirmed figures live on the study as `confirmed_trial_<N>`
user attrs (readable by `optuna` CLI and optuna-dashboard like any other attr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoresearch import format as fmt
from autoresearch.errors import AutoresearchError
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec
from engine.contract import METRICS

UNCONFIRMED = "unconfirmed: single measurement"


def confirmed_key(number: int) -> str:
    return f"confirmed_trial_{number}"


@dataclass
class Figures:
    """One trial's figures: medians, spread (half range), raw samples, ratio to the baseline."""

    trial: FrozenTrial
    medians: dict[str, float]
    spread: dict[str, float]
    samples: dict[str, list[float]]
    ratio: dict[str, float] = field(default_factory=dict)
    confirmed: dict[str, Any] | None = None

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def is_baseline(self) -> bool:
        return bool(self.trial.user_attrs.get("baseline"))

    @property
    def label(self) -> str:
        return f"{self.number} (baseline)" if self.is_baseline else str(self.number)

    @property
    def note(self) -> str:
        if self.confirmed is None:
            return UNCONFIRMED
        return f"confirmed: {self.confirmed.get('repeats', '?')} re-measurements"

    def fmt(self, metric: str) -> str:
        """'median ± spread' for a table cell; '-' when the trial lacks the metric."""
        return fmt.metric_pm(metric, self.medians.get(metric), self.spread.get(metric))


@dataclass
class Results:
    """A loaded study and the figures of its feasible completed trials."""

    spec: StudySpec
    study: optuna.Study
    figures: list[Figures]  # feasible, COMPLETE, in trial order
    infeasible: list[Figures]
    baseline: Figures | None
    machine: str | None = None  # a fleet study's machine these figures are from (fleet.py)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return list(self.spec.objectives)

    def by_number(self, number: int) -> Figures:
        for f in self.figures + self.infeasible:
            if f.number == number:
                return f
        states = {t.number: t.state.name for t in self.study.get_trials(deepcopy=False)}
        why = f"it is {states[number]}" if number in states else "no such trial"
        raise AutoresearchError(
            f"{self.spec.path}: trial {number} has no measured figures ({why}); "
            f"pick one of {', '.join(str(f.number) for f in self.figures) or 'none yet'}"
        )

    def front(self) -> list[Figures]:
        """Non-dominated feasible trials on the figures shown (confirmed when present)."""
        return pareto(self.figures, self.objectives)

    def noise_floor(self) -> dict[str, dict[str, float]]:
        key = f"noise_floor_{self.machine}" if self.machine else "noise_floor"
        return dict(self.study.user_attrs.get(key) or {})

    def best(self) -> dict[str, Figures | None]:
        """Per objective: the feasible trial with the best median (confirmed where present)."""
        out: dict[str, Figures | None] = {}
        for m, d in self.objectives:
            have = [f for f in self.figures if m in f.medians]
            sign = 1.0 if d == "maximize" else -1.0
            out[m] = max(have, key=lambda f: (sign * f.medians[m], -f.number)) if have else None
        return out

    def near_front(self) -> list[Figures]:
        """The front plus trials the noise floor cannot tell apart from it.

        A trial is kept when, moved by the noise floor in its favour on every objective, no
        front trial dominates it any more: one more measurement could put it on the front.
        """
        front = self.front()
        floor = self.noise_floor()
        keep = []
        for f in self.figures:
            if f in front:
                keep.append(f)
                continue
            shifted = dict(f.medians)
            for m, d in self.objectives:
                v = f.medians.get(m)
                if v is None:
                    continue
                nf = floor.get(m, {})
                slack = max(float(nf.get("spread", 0.0)), float(nf.get("relative", 0.0)) * abs(v))
                shifted[m] = v + slack if d == "maximize" else v - slack
            if not any(dominates(g.medians, shifted, self.objectives) for g in front):
                keep.append(f)
        return keep


def load_results(spec: StudySpec, machine: str | None = None) -> Results:
    """Open the stored study (never creates one) and compute every trial's figures.

    In a `machines = "fleet"` study only one machine's trials are compared (fleet.py):
    `machine` if given, else this machine's, else the study's first machine's.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return results_of(spec, open_study(spec, create=False), machine)


def results_of(spec: StudySpec, study: optuna.Study, machine: str | None = None) -> Results:
    """Every trial's figures of an open study (the live display reads a running one)."""
    from autoresearch.fleet import on_machine, results_machine

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    machine = results_machine(study, spec, machine)
    trials = on_machine(trials, machine)
    attrs = study.user_attrs
    raw = [_figures(t, attrs.get(confirmed_key(t.number))) for t in trials]
    base = next((f for f in raw if f.is_baseline), None)
    for f in raw:
        f.ratio = _ratios(f, base)
    feasible = [f for f in raw if _feasible(spec, f)]
    return Results(
        spec=spec,
        study=study,
        figures=feasible,
        infeasible=[f for f in raw if f not in feasible],
        baseline=base,
        machine=machine,
    )


def pareto(figs: list[Figures], objectives: list[tuple[str, str]]) -> list[Figures]:
    """Non-dominated subset: THE Pareto front of every command (status, show, the live display,
    export, report). Hand-written because Optuna's front only reads trial.values, not the
    confirmed figures."""
    have = [f for f in figs if all(m in f.medians for m, _ in objectives)]
    return [
        f
        for f in have
        if not any(dominates(g.medians, f.medians, objectives) for g in have if g is not f)
    ]


def machine_summary(machine: dict[str, Any]) -> str:
    ram = machine.get("ram_bytes")
    parts = [
        str(machine.get("cpu_model") or "?"),
        f"{machine.get('cpu_count', '?')} cores",
        f"{fmt.nbytes(ram)} RAM" if isinstance(ram, int | float) else "",
        f"{machine.get('os', '')} {machine.get('kernel', '')}".strip(),
        f"disk {machine.get('disk_device') or '?'} ({machine.get('disk_fs') or '?'})",
    ]
    return ", ".join(p for p in parts if p)


def dominates(a: dict[str, float], b: dict[str, float], objectives: list[tuple[str, str]]) -> bool:
    better = False
    for m, d in objectives:
        x, y = a.get(m), b.get(m)
        if x is None or y is None:
            return False
        if d == "minimize":
            x, y = -x, -y
        if x < y:
            return False
        better |= x > y
    return better


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _figures(t: FrozenTrial, confirmed: dict[str, Any] | None) -> Figures:
    if confirmed and confirmed.get("metrics"):
        return Figures(
            trial=t,
            medians={k: float(v) for k, v in confirmed["metrics"].items() if _number(v)},
            spread=dict(confirmed.get("spread", {})),
            samples=dict(confirmed.get("samples", {})),
            confirmed=confirmed,
        )
    ua = t.user_attrs
    medians = {m: float(ua[m]) for m in METRICS if _number(ua.get(m))}
    return Figures(
        trial=t,
        medians=medians,
        spread={k: float(v) for k, v in (ua.get("spread") or {}).items() if _number(v)},
        samples={k: v for k, v in (ua.get("samples") or {}).items() if isinstance(v, list)},
    )


def _ratios(f: Figures, base: Figures | None) -> dict[str, float]:
    if f.confirmed and f.confirmed.get("ratio_to_baseline"):
        # Paired with baselines measured in the same session: drift cancels out.
        return dict(f.confirmed["ratio_to_baseline"])
    if base is None:
        return {}
    return {m: v / base.medians[m] for m, v in f.medians.items() if base.medians.get(m)}


def _feasible(spec: StudySpec, f: Figures) -> bool:
    if f.confirmed is None:
        return all(v <= 0 for v in f.trial.constraints.values())
    # Re-measured figures decide: a trial that only squeezed under a limit by luck drops out.
    return all(c.value(f.medians) <= 0 for c in spec.constraints if c.metric in f.medians)
