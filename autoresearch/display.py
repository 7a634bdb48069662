"""Live view of a running study: progress + ETA, the current trial's knobs, the Pareto front.

On a terminal this is a rich Live panel; elsewhere (logs, tests, CI) it prints one plain
`key: value` line per event so a log can be grepped.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from autoresearch.study_file import StudySpec

FRONT_ROWS = 8


class Display:
    def __init__(
        self,
        spec: StudySpec,
        n_trials: int | None,
        timeout_s: float | None,
        console: Console | None = None,
    ) -> None:
        self.spec = spec
        self.console = console or Console()
        self.interactive = self.console.is_terminal
        self.n_trials, self.timeout_s = n_trials, timeout_s
        self.t0 = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        # With only a timeout, progress is measured in seconds rather than trials.
        self.task = self.progress.add_task(spec.name, total=n_trials or timeout_s)
        self.current = Table(title="current trial", show_header=False)
        self.front = Table(title="Pareto front")
        self.notes: list[str] = []
        self._live: Live | None = None

    def __enter__(self) -> Display:
        if self.interactive:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def _render(self) -> Group:
        return Group(self.progress, self.current, self.front, *self.notes[-3:])

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def note(self, text: str) -> None:
        if self.interactive:
            self.notes.append(text)
            self._refresh()
        else:
            self.console.print(f"note: {text}", highlight=False, soft_wrap=True)

    def start_trial(self, number: int, knobs: dict[str, Any], baseline: bool) -> None:
        label = f"{number} (baseline)" if baseline else str(number)
        if not self.interactive:
            shown = " ".join(f"{k}={v}" for k, v in knobs.items())
            self.console.print(f"trial: {label} {shown}", highlight=False, soft_wrap=True)
            return
        self.current = Table(title=f"trial {label}", show_header=False)
        for k, v in knobs.items():
            self.current.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
        self._refresh()

    def trial_done(self, study: optuna.Study, number: int, done: int) -> None:
        ft = study.trials[number]
        if self.n_trials:
            self.progress.update(self.task, completed=done)
        elif self.timeout_s:
            self.progress.update(
                self.task, completed=min(time.monotonic() - self.t0, self.timeout_s)
            )
        if not self.interactive:
            if ft.state == TrialState.COMPLETE:
                vals = " ".join(
                    f"{m}={v:.4g}"
                    for (m, _), v in zip(self.spec.objectives, ft.values, strict=True)
                )
                self.console.print(f"result: {number} {vals}", highlight=False, soft_wrap=True)
            else:
                reason = ft.user_attrs.get("fail_reason", ft.state.name)
                self.console.print(f"failed: {number} {reason}", highlight=False, soft_wrap=True)
            return
        self.update_front(study)

    def update_front(self, study: optuna.Study) -> None:
        if not self.interactive:
            return
        table = Table(title="Pareto front (feasible, complete)")
        table.add_column("trial")
        for m, d in self.spec.objectives:
            table.add_column(f"{m} ({'max' if d == 'maximize' else 'min'})", justify="right")
        for ft in pareto_front(study)[:FRONT_ROWS]:
            table.add_row(str(ft.number), *(f"{v:.4g}" for v in ft.values))
        self.front = table
        self._refresh()


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Feasible non-dominated completed trials (Optuna's own definition)."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        try:
            return [study.best_trial]
        except ValueError:
            return []  # no feasible trial yet
    return sorted(study.best_trials, key=lambda t: t.number)
