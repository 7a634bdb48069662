"""`autoresearch export`: one trial's config as an EngineConfig TOML `engine run` accepts.

The file is the `[engine]` table of the trial's exact stored config plus `[provenance]`
(study, trial, machine, model and store fingerprints, engine version) and
`[provenance.metrics.<name>]` (median, spread, ratio to the baseline). `engine run/probe`
reads `provenance.store_fingerprint` and refuses the file on another store without --force.

Picks: fastest (max decode_tok_s), smallest (min memory_bytes), balanced (shortest distance
to the utopia point, each objective scaled to [0, 1] over the candidates), or --trial N.
Once `confirm` has run, only confirmed trials compete (single runs are optimistic).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoresearch.errors import AutoresearchError
from autoresearch.results import Figures, Results, machine_summary, pareto
from engine.config import EngineConfig
from engine.errors import EngineError
from engine.store import Store

PICKS = ("fastest", "smallest", "balanced")


class NoTrialFits(AutoresearchError):
    """No measured trial satisfies the export limits."""


@dataclass(frozen=True)
class Limits:
    max_memory: float | None = None
    max_kl: float | None = None

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
        what = ", ".join(f"{flag} {lim:g}" for _, flag, lim in limits.checks())
        got = ", ".join(f"{m}={closest.medians.get(m, float('nan')):.4g}"
                        for m, _, _ in limits.checks())  # fmt: skip
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
        return balanced(fits, res.objectives)
    raise AutoresearchError(f"--pick must be one of {', '.join(PICKS)}, got {pick!r}")


def _best(res: Results, fits: list[Figures], metric: str, direction: str) -> Figures:
    have = [f for f in fits if metric in f.medians]
    if not have:
        raise AutoresearchError(f"{res.spec.path}: no trial has the metric {metric!r}")
    sign = 1.0 if direction == "maximize" else -1.0
    # Ties (e.g. equal memory) go to the better other objectives: stay on the front.
    front = pareto(have, res.objectives) or have
    return max(front, key=lambda f: (sign * f.medians[metric], -f.number))


def balanced(fits: list[Figures], objectives: list[tuple[str, str]]) -> Figures:
    """Closest to the utopia point (best of every objective), each scaled to [0, 1]."""
    front = pareto(fits, objectives) or fits
    objs = [(m, d) for m, d in objectives if all(m in f.medians for f in front)]

    def distance(f: Figures) -> float:
        total = 0.0
        for m, d in objs:
            vals = [g.medians[m] for g in front]
            lo, hi = min(vals), max(vals)
            if hi == lo:
                continue  # an objective nobody differs on cannot tell trials apart
            x = (f.medians[m] - lo) / (hi - lo)
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
        return Store.open(Path(store)).manifest.get("source", {}).get("fingerprint")
    except (EngineError, OSError):
        return None


def check_store(res: Results, f: Figures, store: str | None, *, force: bool) -> None:
    """Refuse (or warn, with force) when the target store is not what the trial measured."""
    ua = f.trial.user_attrs
    problems = []
    target = store or ua.get("store")
    try:
        s = Store.open(Path(str(target)))
    except (EngineError, OSError) as e:
        problems.append(f"store {target} cannot be opened ({e})")
        s = None
    if s is not None and store is not None:
        want, have = (
            model_fingerprint(ua.get("store")),
            s.manifest.get("source", {}).get("fingerprint"),
        )
        if want and have != want:
            problems.append(
                f"--store {store} holds model {str(have)[:12]} but trial {f.number} was tuned "
                f"on model {want[:12]}"
            )
    elif s is not None and s.fingerprint != ua.get("store_fingerprint"):
        problems.append(
            f"store {target} was re-packed since trial {f.number} measured it (fingerprint "
            f"{s.fingerprint[:12]} != {str(ua.get('store_fingerprint'))[:12]})"
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
    """Write the picked trial's config + provenance to `out`; returns the trial's figures."""
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
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "toml":
        config.to_toml(out, extra_tables={"provenance": prov})
    elif fmt == "json":
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"engine": config.to_dict(), "provenance": prov}, indent=2))
        tmp.replace(out)
    else:
        raise AutoresearchError(f"--format must be toml or json, got {fmt!r}")
    return f
