"""`autoresearch confirm`: re-measure the Pareto front so a lucky single run cannot win.

Every front trial, and every trial within the noise floor of the front, is probed `repeats`
more times in the same child-process runner the loop uses, interleaved with the baseline
(B, T1, B, T2, ..., then again) so drift (thermal, page cache, other load) hits both sides.
Ratios to the baseline are medians of the paired ratios T_i / B_i. The trial's original
`samples` are kept untouched; the re-measurement goes to the study user attr
`confirmed_trial_<N>` (Optuna refuses user attrs on finished trials), and a readable table
for Optuna's own tools (optuna_view.py).

Progress says "run k of M" with an ETA from the runs so far. When a re-measured spread is
well above the study's noise floor (SPREAD_WARN x, and SPREAD_WARN_ABS above it), the
summary carries a warning: the machine was not as quiet as when the floor was measured.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoresearch import format as fmt
from autoresearch.errors import AutoresearchError
from autoresearch.optuna_view import publish
from autoresearch.results import Figures, confirmed_key, load_results
from autoresearch.study_file import StudySpec
from autoresearch.trial import run_probe
from engine import api
from engine.config import EngineConfig
from engine.contract import METRICS
from engine.errors import ConfigError

SPREAD_WARN = 3.0  # x the noise floor's relative spread ...
SPREAD_WARN_ABS = 0.02  # ... and at least 2 percentage points above it


@dataclass
class ConfirmSummary:
    trials: list[int] = field(default_factory=list)  # re-measured, baseline excluded
    runs: int = 0
    failures: list[str] = field(default_factory=list)
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    planned: int = 0  # probe runs planned: repeats x (baseline + each trial)


def confirm_study(
    spec: StudySpec,
    *,
    repeats: int = 3,
    note: Callable[[str], None] = print,
    trials: list[int] | None = None,
) -> ConfirmSummary:
    """Re-measure the near-front trials (or just `trials`) `repeats` times each, interleaved
    with the baseline."""
    if repeats < 1:
        raise AutoresearchError(f"--repeats must be >= 1, got {repeats}")
    res = load_results(spec)
    base = res.baseline
    if base is None:
        raise AutoresearchError(
            f"{spec.path}: study {spec.name!r} has no completed baseline trial to compare "
            f"against; run `autoresearch run {spec.path}` first"
        )
    near = res.near_front() if trials is None else [res.by_number(n) for n in trials]
    targets = [f for f in near if not f.is_baseline]
    required = sorted({m for m, _ in spec.objectives} | {c.metric for c in spec.constraints})
    summary = ConfirmSummary(trials=[f.number for f in targets])
    summary.planned = repeats * (2 * len(targets) if targets else 1)
    if spec.probe_command is None:  # every run loads the compiled kernels (see loop.run_study)
        api.compile_kernels()
    note(
        f"confirm: {len(targets)} trial(s) {summary.trials} x {repeats} repeats, interleaved "
        f"with baseline trial {base.number}: {summary.planned} probe runs"
    )
    t0 = time.monotonic()

    def progress(what: str, m: dict[str, float] | None) -> None:
        done = summary.runs
        eta = (time.monotonic() - t0) / done * (summary.planned - done)
        left = f", ETA {fmt.seconds(eta)}" if done < summary.planned else ""
        note(f"run {done} of {summary.planned}: {what} {_short(m)}{left}")

    base_samples: list[dict[str, float]] = []
    pairs: dict[int, list[tuple[dict[str, float] | None, dict[str, float]]]] = {
        f.number: [] for f in targets
    }
    errors: dict[int, list[str]] = {f.number: [] for f in targets}
    errors[base.number] = []
    for r in range(repeats):
        for f in targets or [None]:
            b = _measure(spec, base, required, errors[base.number])
            summary.runs += 1
            progress(f"repeat {r + 1}/{repeats} baseline trial {base.number}", b)
            if b is not None:
                base_samples.append(b)
            if f is None:
                continue  # nothing but the baseline on the front: its repeats are the point
            t = _measure(spec, f, required, errors[f.number])
            summary.runs += 1
            progress(f"repeat {r + 1}/{repeats} trial {f.number}", t)
            if t is not None:
                pairs[f.number].append((b, t))
    when = datetime.now(UTC).isoformat(timespec="seconds")
    for f in targets:
        rec = _record(f, pairs[f.number], errors[f.number], when, base.number, repeats)
        res.study.set_user_attr(confirmed_key(f.number), rec)
        summary.records[f.number] = rec
        summary.failures += [f"trial {f.number}: {e}" for e in errors[f.number]]
    brec = _record(
        base,
        [(None, b) for b in base_samples],
        errors[base.number],
        when,
        base.number,
        len(base_samples),
    )
    brec["ratio_to_baseline"] = {m: 1.0 for m in brec["metrics"]}
    res.study.set_user_attr(confirmed_key(base.number), brec)
    summary.records[base.number] = brec
    summary.failures += [f"baseline trial {base.number}: {e}" for e in errors[base.number]]
    summary.warnings = spread_warnings(spec, res.noise_floor(), summary.records, base.number)
    publish(load_results(spec))  # metric names + confirmed table for Optuna's own tools
    return summary


def spread_warnings(
    spec: StudySpec,
    floor: dict[str, dict[str, float]],
    records: dict[int, dict[str, Any]],
    baseline: int,
) -> list[str]:
    """One warning per (trial, objective) whose re-measured spread dwarfs the noise floor."""
    out = []
    for number, rec in sorted(records.items()):
        for m, _ in spec.objectives:
            med, spread = rec["metrics"].get(m), rec["spread"].get(m)
            nf = floor.get(m, {}).get("relative")
            if not med or spread is None or nf is None:
                continue
            rel = abs(spread / med)
            if rel > max(SPREAD_WARN * nf, nf + SPREAD_WARN_ABS):
                who = f"baseline trial {number}" if number == baseline else f"trial {number}"
                out.append(
                    f"{who}: {m} spread {fmt.share(rel)} over {rec['repeats']} re-measurements "
                    f"is well above the noise floor {fmt.share(nf)}; the machine was busier "
                    "than when the floor was measured (other load, heat, page cache), so "
                    "these figures are unreliable: rerun confirm on a quiet machine"
                )
    return out


def summary_lines(spec: StudySpec, summary: ConfirmSummary) -> list[str]:
    """What `autoresearch confirm` prints: each trial's figure before -> after, in units."""
    first = spec.objectives[0][0]
    lines = []
    for number, rec in summary.records.items():
        before, after = rec["before"].get(first), rec["metrics"].get(first)
        ratio = rec["ratio_to_baseline"].get(first)
        moved = f"{fmt.metric(first, before)} -> " if before is not None else ""
        now = fmt.metric_pm(first, after, rec["spread"].get(first)) if after is not None else "n/a"
        vs = f" ({fmt.ratio(ratio)} baseline)" if ratio is not None else ""
        lines.append(f"confirmed trial {number}: {first} {moved}{now}{vs}, {rec['repeats']} runs")
    lines += [f"failed: {f}" for f in summary.failures]
    lines.append(f"runs: {summary.runs} of {summary.planned}")
    return lines


def _measure(
    spec: StudySpec, f: Figures, required: list[str], errors: list[str]
) -> dict[str, float] | None:
    """One probe run (repeats=1) of the trial's exact stored config; None when it failed."""
    ua = f.trial.user_attrs
    try:
        config = EngineConfig.from_dict(ua["config"], source=f"trial {f.number} config")
        store = Path(ua["store"])
    except (KeyError, ConfigError) as e:
        raise AutoresearchError(
            f"{spec.path}: trial {f.number} has no usable stored config/store ({e}); it was "
            "not recorded by `autoresearch run`, so it cannot be re-measured"
        ) from e
    t0 = time.monotonic()
    result = run_probe(
        config,
        store=store,
        suite=spec.suite,
        repeats=1,
        cold=spec.cold,
        timeout_s=spec.trial_timeout_s,
        required=required,
        template=spec.probe_command,
    )
    if result.error is not None:
        errors.append(f"{result.error} (after {fmt.seconds(time.monotonic() - t0)})")
        return None
    return {
        m: float(v)
        for m, v in result.metrics.items()
        if m in METRICS and isinstance(v, int | float) and not isinstance(v, bool)
    }


def _record(
    f: Figures,
    pairs: list[tuple[dict[str, float] | None, dict[str, float]]],
    errors: list[str],
    when: str,
    baseline: int,
    asked: int,
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {}
    for _, t in pairs:
        for m, v in t.items():
            samples.setdefault(m, []).append(v)
    ratios: dict[str, float] = {}
    for m in samples:
        rs = [t[m] / b[m] for b, t in pairs if b is not None and b.get(m) and m in t]
        if rs:
            ratios[m] = statistics.median(rs)
    return {
        "when": when,
        "repeats": len(pairs),
        "asked": asked,
        "baseline_trial": baseline,
        "metrics": {m: statistics.median(v) for m, v in samples.items()},
        "spread": {m: (max(v) - min(v)) / 2 for m, v in samples.items()},
        "samples": samples,
        "ratio_to_baseline": ratios,
        # The in-loop single measurement, so a reader sees how much the front moved.
        "before": {m: v for m, v in f.trial.user_attrs.items() if m in METRICS and _num(v)},
        "failures": errors,
    }


def _num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _short(m: dict[str, float] | None) -> str:
    if m is None:
        return "FAILED"
    return f"decode_tok_s={fmt.metric('decode_tok_s', m.get('decode_tok_s'))}"
