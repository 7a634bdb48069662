"""`autoresearch export`: one trial's config as an EngineConfig TOML `engine run` accepts.

The file is the `[engine]` table of the trial's exact stored config plus `[provenance]`
(study, trial, machine, model and store fingerprints, engine version) and
`[provenance.metrics.<name>]` (median, spread, ratio to the baseline). `engine run/probe`
reads `provenance.store_fingerprint` and refuses the file on another store without --force.

Picks: fastest (max decode_tok_s), smallest (min memory_bytes), balanced (shortest distance
to the utopia point, each objective scaled to [0, 1] over the candidates), or --trial N.
Once `confirm` has run, only confirmed trials compete (single runs are optimistic).

`balanced` ignores differences nobody could act on: a kl_mean gap below KL_MEANINGFUL, and
speed/memory gaps within the noise floor or the trials' own spread. Such a trial cannot win
(or lose) on that objective alone.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomli_w

from autoresearch import format as fmt
from autoresearch.errors import AutoresearchError
from autoresearch.outfile import write_text
from autoresearch.results import Figures, Results, dominates, machine_summary, pareto
from engine.api import store_info
from engine.config import EngineConfig
from engine.errors import EngineError

PICKS = ("fastest", "smallest", "balanced")
# Mean KL (nats) below which two configs' outputs count as equally good: 0.01 nats is about
# a 1% change in next-token probabilities, under anything greedy decoding would show.
KL_MEANINGFUL = 0.01


class NoTrialFits(AutoresearchError):
    """No measured trial satisfies the export limits."""


@dataclass(frozen=True)
class Limits:
    max_memory: float | None = None
    max_kl: float | None = None

    def __post_init__(self) -> None:
        for flag, v in (("--max-memory", self.max_memory), ("--max-kl", self.max_kl)):
            if v is not None and (not math.isfinite(v) or v < 0):
                raise AutoresearchError(f"{flag} must be a finite number >= 0, got {v!r}")

    def checks(self) -> list[tuple[str, str, float]]:
        out = []
        if self.max_memory is not None:
            out.append(("memory_bytes", "--max-memory", self.max_memory))
        if self.max_kl is not None:
            out.append(("kl_mean", "--max-kl", self.max_kl))
        return out

    def excess(self, f: Figures) -> float | None:
        """0 when f fits; else the summed relative excess (how far off); None: metric missing."""
        total = 0.0
        for metric, _, limit in self.checks():
            v = f.medians.get(metric)
            if v is None:
                return None
            if v > limit:
                total += (v - limit) / max(abs(limit), 1e-12)
        return total


def pick_trial(res: Results, pick: str, limits: Limits, trial: int | None = None) -> Figures:
    """The exported trial; raises NoTrialFits naming the closest trial when none fits."""
    pool = [res.by_number(trial)] if trial is not None else res.figures
    if trial is None and any(f.confirmed for f in pool):
        # Unconfirmed figures are single, selection-biased runs: once the front has been
        # re-measured, only re-measured trials compete (confirm covers the near-front).
        pool = [f for f in pool if f.confirmed]
    if not pool:
        raise AutoresearchError(
            f"{res.spec.path}: study {res.spec.name!r} has no feasible completed trial yet; "
            f"run `autoresearch run {res.spec.path}` (see `autoresearch show` for failures)"
        )
    fits = [f for f in pool if limits.excess(f) == 0]
    if not fits:
        known = [f for f in pool if limits.excess(f) is not None]
        closest = min(known, key=lambda f: limits.excess(f) or 0.0) if known else pool[0]
        what = ", ".join(
            f"{flag} {lim:g} ({fmt.metric(m, lim)})" for m, flag, lim in limits.checks()
        )
        got = ", ".join(
            f"{m}={fmt.metric(m, closest.medians.get(m))}" for m, _, _ in limits.checks()
        )
        if trial is not None:
            raise NoTrialFits(
                f"{res.spec.path}: trial {trial} does not satisfy {what}: it has {got}. Relax "
                "the limit or export another trial"
            )
        raise NoTrialFits(
            f"{res.spec.path}: no trial satisfies {what}; the closest is trial "
            f"{closest.number} with {got}. Relax the limit or run more trials"
        )
    if trial is not None:
        return fits[0]
    if pick == "fastest":
        return _best(res, fits, "decode_tok_s", "maximize")
    if pick == "smallest":
        return _best(res, fits, "memory_bytes", "minimize")
    if pick == "balanced":
        return balanced(fits, res.objectives, tolerances(res, fits))
    raise AutoresearchError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")


def _best(res: Results, fits: list[Figures], metric: str, direction: str) -> Figures:
    have = [f for f in fits if metric in f.medians]
    if not have:
        raise AutoresearchError(f"{res.spec.path}: no trial has the metric {metric!r}")
    sign = 1.0 if direction == "maximize" else -1.0
    # Ties (e.g. equal memory) go to the better other objectives: stay on the front.
    front = pareto(have, res.objectives) or have
    return max(front, key=lambda f: (sign * f.medians[metric], -f.number))


def tolerances(res: Results, figs: list[Figures]) -> dict[str, float]:
    """Per objective: the smallest difference that means something (see module doc)."""
    floor = res.noise_floor()
    out = {}
    for m, _ in res.objectives:
        vals = [abs(f.medians[m]) for f in figs if m in f.medians]
        nf = floor.get(m, {})
        tol = max(
            float(nf.get("spread", 0.0)),
            float(nf.get("relative", 0.0)) * (max(vals) if vals else 0.0),
            max((f.spread.get(m, 0.0) for f in figs), default=0.0),
        )
        if m == "kl_mean":
            tol = max(tol, KL_MEANINGFUL)
        out[m] = tol
    return out


def _snap(
    figs: list[Figures], objectives: list[tuple[str, str]], tol: dict[str, float]
) -> dict[int, dict[str, float]]:
    """Medians with every value within `tol` of the best set to the best: a difference the
    noise (or KL_MEANINGFUL) cannot tell apart is no difference."""
    out = {f.number: dict(f.medians) for f in figs}
    for m, d in objectives:
        have = [f for f in figs if m in f.medians]
        if not have:
            continue
        pick = max if d == "maximize" else min
        best = pick(f.medians[m] for f in have)
        for f in have:
            if abs(f.medians[m] - best) <= tol.get(m, 0.0):
                out[f.number][m] = best
    return out


def balanced(
    fits: list[Figures],
    objectives: list[tuple[str, str]],
    tol: dict[str, float] | None = None,
) -> Figures:
    """Closest to the utopia point (best of every objective), each scaled to [0, 1], on
    figures whose insignificant differences (within `tol`) are erased first."""
    snapped = _snap(fits, objectives, tol or {})
    have = [f for f in fits if all(m in f.medians for m, _ in objectives)]
    front = (
        [
            f
            for f in have
            if not any(
                dominates(snapped[g.number], snapped[f.number], objectives)
                for g in have
                if g is not f
            )
        ]
        or pareto(fits, objectives)
        or fits
    )
    objs = [(m, d) for m, d in objectives if all(m in snapped[f.number] for f in front)]

    def distance(f: Figures) -> float:
        total = 0.0
        for m, d in objs:
            vals = [snapped[g.number][m] for g in front]
            lo, hi = min(vals), max(vals)
            if hi == lo:
                continue  # an objective nobody differs on cannot tell trials apart
            x = (snapped[f.number][m] - lo) / (hi - lo)
            total += (1.0 - x if d == "maximize" else x) ** 2
        return math.sqrt(total)

    return min(front, key=lambda f: (distance(f), f.number))


def provenance(res: Results, f: Figures, pick: str) -> dict[str, Any]:
    ua = f.trial.user_attrs
    machine = res.study.user_attrs.get("machine") or {}
    prov: dict[str, Any] = {
        "study": res.spec.name,
        "study_file": str(res.spec.path),
        "storage": res.spec.storage,
        "trial": f.number,
        "pick": pick,
        "measurement": f.note,
        "machine_id": machine.get("id") or ua.get("machine_id"),
        "machine": machine_summary(machine) if machine else None,
        "model_fingerprint": model_fingerprint(ua.get("store")),
        "store_fingerprint": ua.get("store_fingerprint"),
        "store": ua.get("store"),
        "engine_version": ua.get("engine_version"),
        "cold": ua.get("cold"),
        "objectives": [f"{d} {m}" for m, d in res.objectives],
        "exported": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if res.baseline is not None:
        prov["baseline_trial"] = res.baseline.number
    metrics = {}
    for m, v in f.medians.items():
        row: dict[str, Any] = {"median": v, "spread": f.spread.get(m, 0.0)}
        if m in f.ratio:
            row["ratio_to_baseline"] = f.ratio[m]
        metrics[m] = row
    prov["metrics"] = metrics
    return {k: v for k, v in prov.items() if v is not None}  # TOML has no null


def model_fingerprint(store: str | None) -> str | None:
    """The source checkpoint's fingerprint recorded in a store manifest; None if unreadable."""
    if not store:
        return None
    try:
        return store_info(Path(store)).model_fingerprint
    except (EngineError, OSError):
        return None


def check_store(res: Results, f: Figures, store: str | None, *, force: bool) -> None:
    """Refuse (or warn, with force) when the target store is not what the trial measured."""
    ua = f.trial.user_attrs
    problems = []
    target = store or ua.get("store")
    try:
        s = store_info(Path(str(target)))
    except (EngineError, OSError) as e:
        problems.append(f"store {target} cannot be opened ({e})")
        s = None
    if s is not None and store is not None:
        want, have = (
            model_fingerprint(ua.get("store")),
            s.model_fingerprint,
        )
        if want and have != want:
            problems.append(
                f"--store {store} holds model {str(have)[:12]} but trial {f.number} was tuned "
                f"on store {ua.get('store')} (model {want[:12]})"
            )
    elif s is not None and s.fingerprint != ua.get("store_fingerprint"):
        problems.append(
            f"store {target} was re-packed since trial {f.number} measured it (it expects "
            f"that store as fingerprint {str(ua.get('store_fingerprint'))[:12]}, found "
            f"{s.fingerprint[:12]}); re-run the study on it to re-measure"
        )
    if not problems:
        return
    msg = "; ".join(problems) + "; its figures may not hold"
    if not force:
        raise AutoresearchError(msg + " (pass --force to export anyway)")
    print(f"warning: {msg}", file=sys.stderr)


def export(
    res: Results,
    out: Path,
    *,
    pick: str = "balanced",
    limits: Limits = Limits(),
    trial: int | None = None,
    fmt: str = "toml",
    store: str | None = None,
    force: bool = False,
) -> Figures:
    """Write the picked trial's config + provenance to `out`; returns the trial's figures.

    `out` may be a symlink (written through) but not a directory or special file.
    """
    if out.is_dir():
        raise AutoresearchError(f"-o {out} is a directory; give a file, e.g. {out / 'tuned.toml'}")
    f = pick_trial(res, pick, limits, trial)
    check_store(res, f, store, force=force)
    try:
        config = EngineConfig.from_dict(f.trial.user_attrs["config"], source=f"trial {f.number}")
    except KeyError:
        raise AutoresearchError(
            f"{res.spec.path}: trial {f.number} has no stored config; export another trial"
        ) from None
    prov = provenance(res, f, pick if trial is None else f"trial {trial}")
    doc = {"engine": config.to_dict(), "provenance": prov}
    if fmt == "toml":
        write_text(out, tomli_w.dumps(doc))
    elif fmt == "json":
        write_text(out, json.dumps(doc, indent=2) + "\n")
    else:
        raise AutoresearchError(f"--format must be toml or json, got {fmt!r}")
    return f


def run_line(f: Figures, config_path: Path) -> str:
    """A ready-to-run `engine run` command for the exported config on the trial's store."""
    store = str(f.trial.user_attrs.get("store") or "STORE")
    prompt = "--prompt-ids 1,2,3"
    try:
        if store_info(Path(store)).has_tokenizer:
            prompt = "--prompt 'Hello'"
    except (EngineError, OSError):
        pass  # the store is gone or unreadable: token ids work on any store
    return (
        f"python -m engine run {shlex.quote(store)} --config {shlex.quote(str(config_path))} "
        f"{prompt}"
    )


def baseline_warning(res: Results, f: Figures, pick: str) -> str | None:
    """When the pick is the untuned engine default, say so: exporting it tunes nothing."""
    if not f.is_baseline:
        return None
    return (
        f"trial {f.number} is the baseline (the engine's default config): no tuned trial beats "
        f"it for --pick {pick}, so this file is the untuned default. Run more trials, or "
        f"export a tuned one with --trial N (see `autoresearch show {res.spec.path}`)"
    )
