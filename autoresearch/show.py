"""`autoresearch show`: what a study found, as rich tables.

The Pareto front (each metric with its spread, confirmed or not), the best trial per
objective, knob importances per objective (Optuna's default evaluator), failures grouped by
reason and the noise floor. Works from one completed trial up.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from autoresearch import format as fmt
from autoresearch.results import UNCONFIRMED, Figures, Results, load_results
from autoresearch.study_file import StudySpec
from autoresearch.term import console as make_console
from autoresearch.term import plain

MIN_IMPORTANCE_TRIALS = 3  # fANOVA on fewer trials ranks noise
ROUGH_IMPORTANCE_TRIALS = 20  # below this, importances are a hint, not a finding
# Only these knobs can change what the model outputs (quality metrics); cache, I/O, prefetch
# and layout never do, so any importance fANOVA gives them for kl_mean is noise.
OUTPUT_KNOBS = frozenset({"quant_bits", "quant_group_size", "experts_per_token"})
QUALITY_METRICS = frozenset({"kl_mean", "top1_agreement"})


def show(spec: StudySpec, console: Console | None = None) -> Results:
    console = console or make_console()
    res = load_results(spec)
    trials = res.study.get_trials(deepcopy=False)
    counts: defaultdict[str, int] = defaultdict(int)
    for t in trials:
        counts[t.state.name.lower()] += 1
    console.print(
        f"study: {spec.name}  storage: {spec.storage}  trials: {len(trials)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        + f"), feasible: {len(res.figures)}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
    console.print(pareto_table(res))
    why = baseline_note(res)
    if why:
        console.print(why, highlight=False, soft_wrap=True, markup=False)
    console.print(best_table(res))
    for table_or_line in importance_tables(res):
        console.print(table_or_line, markup=False)
    console.print(failure_table(res), markup=False)
    console.print(noise_table(res), markup=False)
    return res


def pareto_table(res: Results) -> Table | str:
    front = res.front()
    if not front:
        return "Pareto front: none yet (no feasible completed trial)"
    extra = [m for m in ("latency_p99_s",) if m not in dict(res.objectives)]
    t = Table(title="Pareto front (feasible; median ± spread)")
    if any(f.confirmed is None for f in front):
        t.caption = f"unconfirmed = {UNCONFIRMED}; `autoresearch confirm` re-measures the front"
    t.add_column("trial", no_wrap=True)
    for m, d in res.objectives:
        t.add_column(f"{m} {'↑' if d == 'maximize' else '↓'}", justify="right")
    for m in extra:
        t.add_column(m, justify="right")
    t.add_column("x baseline", justify="right")
    t.add_column("measured")
    t.add_column("knobs", overflow="fold")
    first = res.objectives[0][0]
    for f in sorted(front, key=lambda f: f.number):
        ratio = f.ratio.get(first)
        t.add_row(
            plain(f.label),
            *(plain(f.fmt(m)) for m, _ in res.objectives),
            *(plain(f.fmt(m)) for m in extra),
            plain(fmt.ratio(ratio) if ratio is not None else "-"),
            plain(short_note(f)),
            plain(knobs(f)),
        )
    return t


def baseline_note(res: Results) -> str | None:
    """Say so when the untuned default is still the best on some objective, and what it holds."""
    base = res.baseline
    if base is None or base not in res.figures:
        return None
    sign = {m: 1.0 if d == "maximize" else -1.0 for m, d in res.objectives}
    others = [f for f in res.figures if f is not base]
    # Strictly better than every tuned trial: a tie (e.g. kl_mean 0 everywhere) is no win.
    wins = [
        m
        for m, _ in res.objectives
        if m in base.medians
        and others
        and all(
            sign[m] * base.medians[m] > sign[m] * f.medians.get(m, -sign[m] * math.inf)
            for f in others
        )
    ]
    if not wins:
        return None
    cache = (base.trial.user_attrs.get("config") or {}).get("cache_bytes")
    holds = f" with a {fmt.nbytes(cache)} expert cache" if isinstance(cache, int) else ""
    return (
        f"note: the baseline (engine default{holds}) is still the best on {', '.join(wins)}; "
        "no tuned trial beat it there yet. Tuned trials may trade that for less memory; "
        "run more trials or check the memory budget"
    )


def short_note(f: Figures) -> str:
    return "unconfirmed" if f.confirmed is None else f"confirmed x{f.confirmed.get('repeats')}"


# Short knob names for tables; the full names are in the study and in exported configs.
SHORT = {
    "quant_bits": "bits",
    "quant_group_size": "gs",
    "cache_fraction": "cache",
    "cache_policy": "policy",
    "pinned_fraction": "pinned",
    "io_mode": "io",
    "read_chunk_bytes": "chunk",
    "io_threads": "threads",
    "prefetch": "pf",
    "prefetch_depth": "pf_depth",
    "prefetch_width": "pf_width",
    "experts_per_token": "k",
}


def knobs(f: Figures) -> str:
    def v(x: Any) -> str:
        return f"{x:.2g}" if isinstance(x, float) else str(x)

    cells = [f"{SHORT.get(k, k)}={v(x)}" for k, x in f.trial.params.items()]
    # The engine default's cache is a size, not a sampled fraction: show it, never hide it.
    cache = (f.trial.user_attrs.get("config") or {}).get("cache_bytes")
    if isinstance(cache, int) and not isinstance(cache, bool):
        cells.append(f"cache_bytes={fmt.nbytes(cache)}")
    return " ".join(cells)


def best_table(res: Results) -> Table | str:
    if not res.figures:
        return "best per objective: none yet"
    t = Table(title="best trial per objective")
    for col in ("objective", "trial", "median ± spread", "vs baseline", "measurement"):
        t.add_column(col)
    for m, d in res.objectives:
        have = [f for f in res.figures if m in f.medians]
        if not have:
            t.add_row(m, "-", "-", "-", "-")
            continue
        best = res.best()[m]
        assert best is not None
        ratio = best.ratio.get(m)
        t.add_row(
            plain(f"{d} {m}"),
            plain(best.label),
            plain(best.fmt(m)),
            plain(fmt.ratio(ratio) if ratio is not None else "-"),
            plain(best.note),
        )
    return t


def importances(res: Results) -> dict[str, dict[str, float] | str]:
    """Per objective: knob -> importance, or a line saying why there is none."""
    done = [t for t in res.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    # The baseline holds only the knobs the engine default fixes; comparing on the searched
    # trials' shared knobs keeps the others (e.g. cache_fraction) in the analysis.
    searched = [t for t in done if not t.user_attrs.get("baseline")]
    names = set.intersection(*(set(t.params) for t in searched)) if searched else set()
    all_varied = sorted(n for n in names if len({repr(t.params[n]) for t in searched}) > 1)
    out: dict[str, dict[str, float] | str] = {}
    for i, (m, _) in enumerate(res.objectives):
        varied = all_varied
        if m in QUALITY_METRICS:
            varied = [n for n in all_varied if n in OUTPUT_KNOBS]
            if all_varied and not varied:
                out[m] = (
                    f"knob importances for {m}: none of the searched knobs "
                    f"({', '.join(all_varied)}) can change the model's outputs, so {m} "
                    "differences are measurement noise"
                )
                continue
        if len(searched) < MIN_IMPORTANCE_TRIALS or not varied:
            out[m] = (
                f"knob importances for {m}: need >= {MIN_IMPORTANCE_TRIALS} completed searched "
                f"trials with varied knobs (have {len(searched)}); run more trials"
            )
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[m] = optuna.importance.get_param_importances(
                    res.study, params=varied, target=lambda t, i=i: t.values[i]
                )
        except (ValueError, RuntimeError) as e:
            out[m] = f"knob importances for {m}: not computable ({e})"
    return out


def importance_tables(res: Results) -> list[Table | str]:
    out: list[Table | str] = []
    for m, imp in importances(res).items():
        if isinstance(imp, str):
            out.append(imp)
            continue
        t = Table(title=f"knob importance for {m} (fANOVA)", min_width=50)
        caveat = importance_caveat(res)
        if caveat:
            t.caption = caveat
        t.add_column("knob")
        t.add_column("importance", justify="right")
        for k, v in imp.items():
            t.add_row(plain(k), plain(fmt.share(v)))
        out.append(t)
    return out


def searched_count(res: Results) -> int:
    done = res.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(not t.user_attrs.get("baseline") for t in done)


def importance_caveat(res: Results) -> str | None:
    """A warning under ~20 searched trials: fANOVA then credits knobs with noise."""
    n = searched_count(res)
    if n >= ROUGH_IMPORTANCE_TRIALS:
        return None
    return (
        f"rough: only {n} searched trials (< {ROUGH_IMPORTANCE_TRIALS}); with this few, "
        "importances can credit a knob with noise"
    )


def failure_groups(res: Results) -> dict[str, list[int]]:
    """Failed trials by reason kind (the text before the first ':', e.g. crash, hang)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for t in res.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        reason = str(t.user_attrs.get("fail_reason", "unknown (no fail_reason recorded)"))
        groups[reason.split(":", 1)[0].strip()].append(t.number)
    return dict(groups)


def failure_table(res: Results) -> Table | str:
    groups = failure_groups(res)
    if not groups:
        return "failures: none"
    reasons = {t.number: t.user_attrs.get("fail_reason", "?") for t in res.study.trials}
    t = Table(title="failures by reason")
    for col in ("reason", "count", "trials", "example"):
        t.add_column(col)
    for kind, nums in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        t.add_row(
            plain(kind), plain(len(nums)), plain(", ".join(map(str, nums))), plain(reasons[nums[0]])
        )
    return t


def noise_table(res: Results) -> Table | str:
    floor = res.noise_floor()
    if not floor:
        return "noise floor: not measured yet (the baseline trial has not completed)"
    t = Table(title="noise floor (spread of the repeated baseline)", min_width=50)
    for col in ("metric", "± spread", "relative"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    shown = [m for m, _ in res.objectives] + [c.metric for c in res.spec.constraints]
    for m in dict.fromkeys([*shown, "latency_p99_s"]):
        if m in floor:
            t.add_row(
                plain(m),
                plain(fmt.metric(m, floor[m]["spread"])),
                plain(fmt.share(floor[m]["relative"])),
            )
    return t
