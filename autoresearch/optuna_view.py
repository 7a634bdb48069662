"""What Optuna's own tools (the `optuna` CLI, optuna-dashboard) show of a study.

- Metric names (`study.set_metric_names`): objectives read decode_tok_s / memory_bytes /
  kl_mean there instead of "Objective 0/1/2".
- Confirmed figures: Optuna's objective values are the in-loop single measurements and cannot
  change once a trial is finished, so `confirm`'s re-measurements go into the study user attr
  `confirmed_table` (one row per trial, human units; the raw records stay in
  `confirmed_trial_<N>`), and, when optuna-dashboard is installed, into the study's dashboard
  note, which says which figures the charts show and which ones to trust.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

from autoresearch import format as fmt
from autoresearch.results import Results
from autoresearch.study_file import StudySpec

TABLE_KEY = "confirmed_table"


def label_study(study: optuna.Study, spec: StudySpec) -> None:
    """Name the study's objectives after their metrics (once; a no-op when already named)."""
    names = [m for m, _ in spec.objectives]
    if study.metric_names == names:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is "experimental" in Optuna 5
        study.set_metric_names(names)


def confirmed_table(res: Results) -> list[dict[str, Any]]:
    """One row per confirmed trial: median ± spread per objective, ratio to the baseline."""
    rows = []
    for f in sorted(res.figures + res.infeasible, key=lambda f: f.number):
        if f.confirmed is None:
            continue
        row: dict[str, Any] = {
            "trial": f.number,
            "baseline": f.is_baseline,
            "repeats": f.confirmed.get("repeats"),
        }
        for m, _ in res.objectives:
            row[m] = f.fmt(m)
            if m in f.ratio:
                row[f"{m} vs baseline"] = fmt.ratio(f.ratio[m])
        rows.append(row)
    return rows


def dashboard_note(res: Results, rows: list[dict[str, Any]]) -> str:
    """Markdown for the dashboard's study note."""
    objs = [m for m, _ in res.objectives]
    lines = [
        f"## autoresearch study `{res.spec.name}`",
        "",
        "Objective values in these charts are **single in-loop measurements** "
        f"({', '.join(objs)}). `autoresearch confirm` re-measures the front, interleaved with "
        "the baseline; those figures are the ones to trust. They are below and in the study "
        f"user attr `{TABLE_KEY}` (raw samples: `confirmed_trial_<N>`).",
        "",
    ]
    if not rows:
        lines.append(f"No trial confirmed yet: run `autoresearch confirm {res.spec.path}`.")
        return "\n".join(lines)
    cols = ["trial", "repeats", *objs]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in rows:
        label = f"{r['trial']} (baseline)" if r["baseline"] else str(r["trial"])
        cells = [label, str(r["repeats"]), *(str(r.get(m, "-")) for m in objs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def publish(res: Results) -> None:
    """Write metric names, the confirmed table and (if optuna-dashboard is there) its note."""
    label_study(res.study, res.spec)
    rows = confirmed_table(res)
    res.study.set_user_attr(TABLE_KEY, rows)
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return  # optional dependency; the user attr table is there either way
    save_note(res.study, dashboard_note(res, rows))
