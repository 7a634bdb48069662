"""`autoresearch report`: one self-contained HTML file of what a study learned.

Plotly figures (plotly.js embedded inline once, so the file works offline): the Pareto front
(every 2-D projection, plus 3-D with three objectives) with error bars and the baseline
marked, hypervolume history, knob importances and knob-vs-metric slices (Optuna's own
plots), and per-trial latency distributions from the raw samples.
"""

from __future__ import annotations

import html
import itertools
import warnings
from datetime import UTC, datetime
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna.trial import TrialState

from autoresearch.errors import AutoresearchError
from autoresearch.results import Figures, Results, load_results, machine_summary
from autoresearch.show import importances
from autoresearch.study_file import StudySpec

LATENCY = ("latency_p50_s", "latency_p99_s", "latency_max_s")


def write_report(spec: StudySpec, out: Path) -> Path:
    if out.is_dir():
        raise AutoresearchError(f"-o {out} is a directory; give a file, e.g. {out / 'report.html'}")
    res = load_results(spec)
    sections: list[tuple[str, go.Figure | str]] = [("Pareto front", front_table(res))]
    sections += pareto_figures(res)
    sections += [("Hypervolume history", hypervolume_figure(res))]
    sections += optuna_figures(res)
    sections += [("Per-trial latency distributions", latency_figure(res))]
    parts, js_done = [], False
    for title, body in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(body, str):
            parts.append(body)
            continue
        # The first figure carries plotly.js inline; the others reuse it.
        parts.append(body.to_html(full_html=False, include_plotlyjs=not js_done))
        js_done = True
    machine = res.study.user_attrs.get("machine") or {}
    head = (
        f"<p>study <b>{html.escape(spec.name)}</b> ({html.escape(spec.storage)}); "
        f"{len(res.study.trials)} trials, {len(res.figures)} feasible; machine: "
        f"{html.escape(machine_summary(machine) if machine else 'unknown')}; written "
        f"{datetime.now(UTC).isoformat(timespec='seconds')}</p>"
    )
    doc = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>autoresearch report: {html.escape(spec.name)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>autoresearch report: {html.escape(spec.name)}</h1>{head}"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out)
    return out


def front_table(res: Results) -> str:
    front = sorted(res.front(), key=lambda f: f.number)
    if not front:
        return "<p>No feasible completed trial yet.</p>"
    cols = [m for m, _ in res.objectives]
    rows = ["<table><tr><th>trial</th>" + "".join(f"<th>{c}</th>" for c in cols)
            + "<th>measurement</th><th>knobs</th></tr>"]  # fmt: skip
    for f in front:
        cells = "".join(f"<td>{html.escape(f.fmt(c))}</td>" for c in cols)
        knobs = " ".join(f"{k}={v}" for k, v in f.trial.params.items())
        rows.append(f"<tr><td>{html.escape(f.label)}</td>{cells}<td>{html.escape(f.note)}</td>"
                    f"<td>{html.escape(knobs)}</td></tr>")  # fmt: skip
    return "\n".join(rows) + "</table>"


def _groups(res: Results) -> list[tuple[str, list[Figures], dict[str, object]]]:
    front = res.front()
    base = [f for f in res.figures if f.is_baseline]
    rest = [f for f in res.figures if f not in front and not f.is_baseline]
    return [
        ("dominated", rest, {"color": "#bbbbbb", "size": 7}),
        ("Pareto front", [f for f in front if not f.is_baseline], {"color": "#d62728", "size": 10}),
        ("baseline", base, {"color": "#1f77b4", "size": 14, "symbol": "star"}),
        ("infeasible", res.infeasible, {"color": "#000000", "size": 7, "symbol": "x"}),
    ]


def _hover(f: Figures) -> str:
    return f"trial {f.number}<br>{f.note}"


def pareto_figures(res: Results) -> list[tuple[str, go.Figure | str]]:
    objs = [m for m, _ in res.objectives]
    if len(objs) < 2:
        return [("Pareto front plot", "<p>One objective: see the table above.</p>")]
    out: list[tuple[str, go.Figure | str]] = []
    for x, y in itertools.combinations(objs, 2):
        fig = go.Figure()
        for name, figs, marker in _groups(res):
            figs = [f for f in figs if x in f.medians and y in f.medians]
            fig.add_trace(go.Scatter(
                x=[f.medians[x] for f in figs], y=[f.medians[y] for f in figs], mode="markers",
                name=name, marker=marker, text=[_hover(f) for f in figs],
                customdata=[f.number for f in figs],
                error_x={"type": "data", "array": [f.spread.get(x, 0.0) for f in figs]},
                error_y={"type": "data", "array": [f.spread.get(y, 0.0) for f in figs]},
            ))  # fmt: skip
        fig.update_layout(xaxis_title=x, yaxis_title=y, height=450)
        out.append((f"Pareto front: {y} vs {x}", fig))
    if len(objs) == 3:
        fig = go.Figure()
        for name, figs, marker in _groups(res):
            figs = [f for f in figs if all(m in f.medians for m in objs)]
            fig.add_trace(go.Scatter3d(
                x=[f.medians[objs[0]] for f in figs], y=[f.medians[objs[1]] for f in figs],
                z=[f.medians[objs[2]] for f in figs], mode="markers", name=name,
                marker=_marker_3d(marker),
                text=[_hover(f) for f in figs], customdata=[f.number for f in figs],
            ))  # fmt: skip
        fig.update_layout(
            scene={"xaxis_title": objs[0], "yaxis_title": objs[1], "zaxis_title": objs[2]},
            height=600,
        )
        out.append(("Pareto front (3-D)", fig))
    return out


def _marker_3d(marker: dict[str, object]) -> dict[str, object]:
    """3-D markers: smaller, and 'star' does not exist there (diamond instead)."""
    symbol = {"star": "diamond"}.get(str(marker.get("symbol", "circle")), marker.get("symbol"))
    return {**marker, "size": int(str(marker["size"])) // 2 + 2, "symbol": symbol or "circle"}


def hypervolume_figure(res: Results) -> go.Figure | str:
    study = res.study
    if len(study.directions) < 2:
        return "<p>Hypervolume needs two or more objectives.</p>"
    feasible = [f.trial for f in res.figures]
    if not feasible:
        return "<p>No feasible completed trial yet.</p>"
    # Reference point: 10% beyond the worst feasible value of each objective.
    ref = []
    for i, d in enumerate(study.directions):
        vals = [t.values[i] for t in feasible]
        span = (max(vals) - min(vals)) or abs(max(vals)) or 1.0
        worst = min(vals) if d == optuna.study.StudyDirection.MAXIMIZE else max(vals)
        ref.append(worst - 0.1 * span if d == optuna.study.StudyDirection.MAXIMIZE
                   else worst + 0.1 * span)  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_hypervolume_history(study, ref)
    except (ValueError, RuntimeError) as e:
        return f"<p>Hypervolume history not available: {html.escape(str(e))}</p>"
    fig.update_layout(title="hypervolume of the feasible front (in-loop measurements)")
    return fig


def _searched_knobs(res: Results) -> list[str]:
    done = res.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = [t for t in done if not t.user_attrs.get("baseline")]
    if not searched:
        return []
    names = set.intersection(*(set(t.params) for t in searched))
    return sorted(n for n in names if len({repr(t.params[n]) for t in searched}) > 1)


def optuna_figures(res: Results) -> list[tuple[str, go.Figure | str]]:
    out: list[tuple[str, go.Figure | str]] = []
    imps = importances(res)
    knobs = _searched_knobs(res)
    for i, (m, _) in enumerate(res.objectives):
        imp = imps[m]
        if isinstance(imp, str):
            out.append((f"Knob importance: {m}", f"<p>{html.escape(imp)}</p>"))
        else:
            fig = go.Figure(go.Bar(x=list(imp.values()), y=list(imp), orientation="h"))
            fig.update_layout(xaxis_title=f"importance for {m} (fANOVA)", height=350)
            out.append((f"Knob importance: {m}", fig))
        if not knobs:
            out.append((f"Knobs vs {m}", "<p>No searched knob varies yet.</p>"))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_slice(
                res.study, params=knobs, target=lambda t, i=i: t.values[i], target_name=m
            )
        out.append((f"Knobs vs {m}", fig))
    return out


def latency_figure(res: Results) -> go.Figure | str:
    figs = [f for f in res.figures if any(k in f.medians for k in LATENCY)]
    if not figs:
        return "<p>No trial has latency figures.</p>"
    fig = go.Figure()
    for key in LATENCY:
        xs, ys = [], []
        for f in figs:
            # Raw samples when repeated (or confirmed); else the single measured value.
            vals = f.samples.get(key) or ([f.medians[key]] if key in f.medians else [])
            xs += [f"trial {f.label}"] * len(vals)
            ys += list(vals)
        fig.add_trace(go.Box(x=xs, y=ys, name=key, boxpoints="all"))
    fig.update_layout(boxmode="group", yaxis_title="seconds per decode token", height=450)
    return fig
