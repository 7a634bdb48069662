"""`autoresearch report`: one self-contained HTML file of what a study learned.

Plotly figures (plotly.js embedded inline once, so the file works offline): the Pareto front
(every 2-D projection, plus 3-D with three objectives; each point labelled with its trial,
confirmed points with error bars, unconfirmed ones drawn open), hypervolume history, knob
importances (with a caveat under ~20 trials) and one small knob-vs-metric slice per knob
(Optuna's own plots), per-trial latency distributions, and a table of every trial, failures
and their reasons included. Every axis and cell is in human units (format.py).
"""

from __future__ import annotations

import html
import itertools
import warnings
from datetime import UTC, datetime
from pathlib import Path

import optuna
import plotly.graph_objects as go

from autoresearch import format as fmt
from autoresearch.errors import AutoresearchError
from autoresearch.outfile import write_text
from autoresearch.report_tables import front_table, trials_table
from autoresearch.results import Figures, Results, load_results, machine_summary
from autoresearch.show import importance_caveat, importances
from autoresearch.study_file import StudySpec

LATENCY = ("latency_p50_s", "latency_p99_s", "latency_max_s")
GRID = "<div style='display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr))'>"
Body = go.Figure | str | list[go.Figure]


def write_report(spec: StudySpec, out: Path) -> Path:
    """Write the report to `out` (a symlink is written through; a special file refused)."""
    if out.is_dir():
        raise AutoresearchError(f"-o {out} is a directory; give a file, e.g. {out / 'report.html'}")
    res = load_results(spec)
    sections: list[tuple[str, Body]] = [("Pareto front", front_table(res))]
    sections += pareto_figures(res)
    sections += [("Hypervolume history", hypervolume_figure(res))]
    sections += optuna_figures(res)
    sections += [("Per-trial latency distributions", latency_figure(res))]
    sections += [("All trials", trials_table(res))]
    parts, js_done = [], False
    for title, body in sections:
        if title:  # "" continues the previous section
            parts.append(f"<h2 id='{_anchor(title)}'>{html.escape(title)}</h2>")
        if isinstance(body, str):
            parts.append(body)
            continue
        figs = body if isinstance(body, list) else [body]
        if isinstance(body, list):
            parts.append(GRID)
        for fig in figs:
            # The first figure carries plotly.js inline; the others reuse it.
            parts.append(
                fig.to_html(
                    full_html=False,
                    include_plotlyjs=not js_done,
                    default_width="100%",
                    config={"responsive": True},
                )
            )
            js_done = True
        if isinstance(body, list):
            parts.append("</div>")
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
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
        "td.num{text-align:right}.caveat{color:#a15c00}</style></head><body>"
        f"<h1>autoresearch report: {html.escape(spec.name)}</h1>{head}"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    write_text(out, doc)
    return out


def _anchor(title: str) -> str:
    """'Knobs vs kl_mean' -> 'knobs-vs-kl_mean': a link target for each section."""
    return "-".join("".join(c for c in title.lower() if c.isalnum() or c in " _-").split())


def _groups(res: Results) -> list[tuple[str, list[Figures], dict[str, object]]]:
    front = res.front()
    base = [f for f in res.figures if f.is_baseline]
    rest = [f for f in res.figures if f not in front and not f.is_baseline]
    return [
        ("dominated", rest, {"color": "#999999", "size": 8, "symbol": "circle"}),
        (
            "Pareto front",
            [f for f in front if not f.is_baseline],
            {"color": "#d62728", "size": 11, "symbol": "circle"},
        ),
        ("baseline", base, {"color": "#1f77b4", "size": 15, "symbol": "star"}),
        ("infeasible", res.infeasible, {"color": "#000000", "size": 8, "symbol": "x"}),
    ]


def _split(
    name: str, figs: list[Figures], marker: dict[str, object]
) -> list[tuple[str, list[Figures], dict[str, object], bool]]:
    """(name, figures, marker, error bars?) for confirmed and for unconfirmed figures: only a
    re-measured point has a spread worth drawing; a single measurement is drawn open."""
    conf = [f for f in figs if f.confirmed is not None]
    unconf = [f for f in figs if f.confirmed is None]
    open_marker = {**marker, "symbol": f"{marker['symbol']}-open", "line": {"width": 2}}
    return [
        (f"{name} (confirmed)", conf, marker, True),
        (f"{name} (unconfirmed)", unconf, open_marker, False),
    ]


def _hover(f: Figures, metrics: list[str]) -> str:
    lines = [f"trial {f.label}", f.note] + [f"{m}: {f.fmt(m)}" for m in metrics]
    return "<br>".join(html.escape(x) for x in lines)


def _scale(res: Results, metric: str) -> tuple[float, str]:
    vals = [f.medians[metric] for f in res.figures + res.infeasible if metric in f.medians]
    return fmt.axis(metric, vals)


def pareto_figures(res: Results) -> list[tuple[str, Body]]:
    objs = [m for m, _ in res.objectives]
    if len(objs) < 2:
        return [("Pareto front plot", "<p>One objective: see the table above.</p>")]
    out: list[tuple[str, Body]] = []
    for x, y in itertools.combinations(objs, 2):
        (dx, tx), (dy, ty) = _scale(res, x), _scale(res, y)
        fig = go.Figure()
        for group in _groups(res):
            for name, figs, marker, bars in _split(*group):
                figs = [f for f in figs if x in f.medians and y in f.medians]
                if not figs:
                    continue
                fig.add_trace(
                    go.Scatter(
                        x=[f.medians[x] / dx for f in figs],
                        y=[f.medians[y] / dy for f in figs],
                        mode="markers+text",
                        name=name,
                        marker=marker,
                        text=[str(f.number) for f in figs],
                        textposition="top center",
                        hovertext=[_hover(f, objs) for f in figs],
                        hoverinfo="text",
                        customdata=[f.number for f in figs],
                        error_x={
                            "type": "data",
                            "visible": bars,
                            "array": [f.spread.get(x, 0.0) / dx for f in figs],
                        },
                        error_y={
                            "type": "data",
                            "visible": bars,
                            "array": [f.spread.get(y, 0.0) / dy for f in figs],
                        },
                    )
                )
        fig.update_layout(xaxis_title=tx, yaxis_title=ty, height=480, legend_title="trials")
        out.append((f"Pareto front: {y} vs {x}", fig))
    if len(objs) == 3:
        scales = [_scale(res, m) for m in objs]
        fig = go.Figure()
        for name, figs, marker in _groups(res):
            figs = [f for f in figs if all(m in f.medians for m in objs)]
            fig.add_trace(
                go.Scatter3d(
                    x=[f.medians[objs[0]] / scales[0][0] for f in figs],
                    y=[f.medians[objs[1]] / scales[1][0] for f in figs],
                    z=[f.medians[objs[2]] / scales[2][0] for f in figs],
                    mode="markers+text",
                    name=name,
                    marker=_marker_3d(marker),
                    text=[str(f.number) for f in figs],
                    hovertext=[_hover(f, objs) for f in figs],
                    hoverinfo="text",
                    customdata=[f.number for f in figs],
                )
            )
        fig.update_layout(
            scene={
                "xaxis_title": scales[0][1],
                "yaxis_title": scales[1][1],
                "zaxis_title": scales[2][1],
            },
            height=600,
        )
        out.append(("Pareto front (3-D)", fig))
    return out


def _marker_3d(marker: dict[str, object]) -> dict[str, object]:
    """3-D markers: smaller, and 'star' does not exist there (diamond instead)."""
    symbol = {"star": "diamond"}.get(str(marker.get("symbol", "circle")), marker.get("symbol"))
    return {**marker, "size": int(str(marker["size"])) // 2 + 2, "symbol": symbol or "circle"}


def hypervolume_figure(res: Results) -> Body:
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
        ref.append(
            worst - 0.1 * span if d == optuna.study.StudyDirection.MAXIMIZE else worst + 0.1 * span
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_hypervolume_history(study, ref)
    except (ValueError, RuntimeError) as e:
        return f"<p>Hypervolume history not available: {html.escape(str(e))}</p>"
    fig.update_layout(title="hypervolume of the feasible front (in-loop measurements)")
    return fig


def _searched_knobs(res: Results) -> list[str]:
    done = [f.trial for f in res.figures + res.infeasible]
    searched = [t for t in done if not t.user_attrs.get("baseline")]
    if not searched:
        return []
    names = set.intersection(*(set(t.params) for t in searched))
    return sorted(n for n in names if len({repr(t.params[n]) for t in searched}) > 1)


def optuna_figures(res: Results) -> list[tuple[str, Body]]:
    out: list[tuple[str, Body]] = []
    imps = importances(res)
    knobs = _searched_knobs(res)
    caveat = importance_caveat(res)
    for i, (m, _) in enumerate(res.objectives):
        imp = imps[m]
        if isinstance(imp, str):
            out.append((f"Knob importance: {m}", f"<p>{html.escape(imp)}</p>"))
        else:
            fig = go.Figure(go.Bar(x=[100 * v for v in imp.values()], y=list(imp), orientation="h"))
            fig.update_layout(xaxis_title=f"share of {m}'s variance (%, fANOVA)", height=350)
            note = f"<p class='caveat'>{html.escape(caveat)}</p>" if caveat else ""
            out += [(f"Knob importance: {m}", note), ("", fig)]
        if not knobs:
            out.append((f"Knobs vs {m}", "<p>No searched knob varies yet.</p>"))
            continue
        div, title = _scale(res, m)
        figs = []
        for k in knobs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = optuna.visualization.plot_slice(
                    res.study,
                    params=[k],
                    target=lambda t, i=i, d=div: t.values[i] / d,
                    target_name=title,
                )
            # One small plot per knob, laid out in a grid: Optuna's one-row subplot strip
            # runs off the page past three knobs. Few ticks keep log axes readable.
            fig.update_layout(
                title=k,
                width=None,
                height=320,
                autosize=True,
                margin={"l": 60, "r": 20, "t": 40, "b": 40},
            )
            fig.update_xaxes(nticks=5, title=k)
            if fig.layout.xaxis.type == "log":
                fig.update_xaxes(dtick="D2")  # labels at 1, 2, 5 x 10^n only: not 9 digits
            fig.update_traces(marker={"showscale": False})
            figs.append(fig)
        out.append((f"Knobs vs {m}", figs))
    return out


def latency_figure(res: Results) -> Body:
    figs = [f for f in res.figures if any(k in f.medians for k in LATENCY)]
    if not figs:
        return "<p>No trial has latency figures.</p>"
    div, title = fmt.axis("latency_max_s", [f.medians.get("latency_max_s", 0.0) for f in figs])
    fig = go.Figure()
    for key in LATENCY:
        xs, ys = [], []
        for f in figs:
            # Raw samples when repeated (or confirmed); else the single measured value.
            vals = f.samples.get(key) or ([f.medians[key]] if key in f.medians else [])
            xs += [f"trial {f.label}"] * len(vals)
            ys += [v / div for v in vals]
        fig.add_trace(go.Box(x=xs, y=ys, name=key, boxpoints="all"))
    unit = title.rsplit("(", 1)[-1].rstrip(")")
    fig.update_layout(boxmode="group", yaxis_title=f"seconds per decode token ({unit})", height=450)
    return fig
