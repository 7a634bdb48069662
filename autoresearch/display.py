"""Live view of a running study: progress + ETA, the current trial (its phase and how long it
has run), the best so far against the baseline, the Pareto front; at the end, what to run next.

On a terminal this is a rich Live panel; elsewhere (logs, tests, CI) it prints one plain
`key: value` line per event so a log can be grepped. Figures come from results.py (the one
Pareto front, in human units); text from trials and children is never read as rich markup.
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
from rich.text import Text

from autoresearch import format as fmt
from autoresearch.results import Results, results_of
from autoresearch.study_file import StudySpec
from autoresearch.term import plain

FRONT_ROWS = 8
PHASES = ("synthesizing", "packing", "screening", "probing")


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
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} trials"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        # With only a timeout, progress is measured in seconds rather than trials.
        self.task = self.progress.add_task(spec.name, total=n_trials or timeout_s)
        self.trial_label: str | None = None
        self.knobs: dict[str, Any] = {}
        self.phase_name = "starting"
        self.trial_t0 = time.monotonic()
        self.front = Table(title="Pareto front")
        self.best_lines: list[str] = []
        self.notes: list[str] = []
        self._live: Live | None = None

    def __enter__(self) -> Display:
        if self.interactive:
            self._live = Live(self, console=self.console, refresh_per_second=2)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.__exit__(None, None, None)
        if exc[0] is None:
            for line in next_commands(self.spec):
                self.console.print(line, highlight=False, soft_wrap=True, markup=False)

    def __rich__(self) -> Group:
        # Rendered at every refresh, so the current trial's elapsed time ticks on its own.
        return Group(
            self.progress,
            self._current(),
            *map(plain, self.best_lines),
            self.front,
            *map(plain, self.notes[-3:]),
        )

    def _current(self) -> Table | Text:
        if self.trial_label is None:
            return plain(f"phase: {self.phase_name}")
        t = Table(title=f"trial {self.trial_label}", show_header=False)
        elapsed = fmt.seconds(time.monotonic() - self.trial_t0)
        t.add_row(plain("phase"), plain(f"{self.phase_name} ({elapsed} in this trial)"))
        for k, v in self.knobs.items():
            t.add_row(plain(k), plain(_knob(v)))
        return t

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def note(self, text: str) -> None:
        if self.interactive:
            self.notes.append(text)
            self._refresh()
        else:
            self._line(f"note: {text}")

    def phase(self, name: str) -> None:
        """What the run is doing now: synthesizing, packing, screening or probing."""
        self.phase_name = name
        if self.interactive:
            self._refresh()
        elif name not in ("synthesizing", "packing"):
            # In a log, synthesizing/packing are announced by a note when they really happen
            # (a cached model or store is only opened).
            where = f" trial {self.trial_label}" if self.trial_label is not None else ""
            self._line(f"phase: {name}{where}")

    def start_trial(self, number: int, knobs: dict[str, Any], baseline: bool) -> None:
        self.trial_label = f"{number} (baseline)" if baseline else str(number)
        self.knobs, self.trial_t0, self.phase_name = dict(knobs), time.monotonic(), "starting"
        if not self.interactive:
            shown = " ".join(f"{k}={_knob(v)}" for k, v in knobs.items())
            self._line(f"trial: {self.trial_label} {shown}")
            return
        self._refresh()

    def trial_done(self, study: optuna.Study, number: int, done: int) -> None:
        ft = study.trials[number]
        took = fmt.seconds(time.monotonic() - self.trial_t0)
        if self.n_trials:
            self.progress.update(self.task, completed=done)
        elif self.timeout_s:
            self.progress.update(
                self.task, completed=min(time.monotonic() - self.t0, self.timeout_s)
            )
        self.trial_label, self.phase_name = None, "between trials"
        if not self.interactive:
            if ft.state == TrialState.COMPLETE:
                vals = " ".join(
                    f"{m}={fmt.metric(m, v)}"
                    for (m, _), v in zip(self.spec.objectives, ft.values, strict=True)
                )
                self._line(f"result: {number} {vals} ({took})")
            else:
                reason = ft.user_attrs.get("fail_reason", ft.state.name)
                self._line(f"failed: {number} {reason} ({took})")
            for line in best_lines(results_of(self.spec, study)):
                self._line(line)
            return
        self.update_front(study)

    def update_front(self, study: optuna.Study) -> None:
        if not self.interactive:
            return
        res = results_of(self.spec, study)
        table = Table(title="Pareto front (feasible, complete)")
        table.add_column("trial")
        for m, d in self.spec.objectives:
            table.add_column(f"{m} ({'max' if d == 'maximize' else 'min'})", justify="right")
        for f in sorted(res.front(), key=lambda f: f.number)[:FRONT_ROWS]:
            table.add_row(plain(f.label), *(plain(f.fmt(m)) for m, _ in self.spec.objectives))
        self.front = table
        self.best_lines = best_lines(res)
        self._refresh()


def _knob(v: Any) -> str:
    """A sampled knob value: 0.151, not 0.1514475154617042."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def best_lines(res: Results) -> list[str]:
    """'best so far' per objective, against the baseline's figure."""
    out = []
    for (m, _), best in zip(res.objectives, res.best().values(), strict=True):
        if best is None:
            continue
        ratio = best.ratio.get(m)
        if best.is_baseline:
            vs = " (the baseline itself)"
        elif ratio is not None and res.baseline is not None:
            vs = f" ({fmt.ratio(ratio)} baseline {fmt.metric(m, res.baseline.medians.get(m))})"
        else:
            vs = " (no baseline yet)"
        out.append(f"best so far {m}: {best.fmt(m)} trial {best.number}{vs}")
    return out


def next_commands(spec: StudySpec) -> list[str]:
    """What to run once trials are in: the user's journey from study to tuned config."""
    p = spec.path
    return [
        "next:",
        f"  autoresearch show {p}      # the Pareto front, importances, failures",
        f"  autoresearch confirm {p}   # re-measure the front against the baseline",
        f"  autoresearch export {p} -o tuned.toml   # then: python -m engine run STORE "
        "--config tuned.toml",
        f"  autoresearch report {p} -o report.html",
    ]
