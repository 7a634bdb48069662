"""What a trial leaves in the study: its metrics and spread, the baseline's noise floor, a
failure's reason, a retry's requeue, a duplicate's pointer to its twin (the loop's bookkeeping,
apart from how a trial is run)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import optuna
from optuna.trial import TrialState

from autoresearch import fleet
from autoresearch.display import Display
from autoresearch.storage import OptunaInternals, retry_attrs
from autoresearch.trial import ProbeResult


def skip_duplicate(study: optuna.Study, trial: optuna.Trial, twin: int, display: Display) -> str:
    trial.set_user_attr("duplicate_of", twin)
    study.tell(trial, state=TrialState.PRUNED)
    display.note(f"trial {trial.number}: same config as trial {twin}; not measured again")
    return "duplicate"


def _storable(value: Any) -> bool:
    """A finite scalar, or a dict of finite numbers (e.g. ttft_by_prompt_tokens)."""
    if isinstance(value, dict):
        return all(isinstance(v, int | float) and math.isfinite(v) for v in value.values())
    return isinstance(value, int | float | str | bool) and not (
        isinstance(value, float) and not math.isfinite(value)
    )


def store_metrics(study: optuna.Study, trial: optuna.Trial, result: ProbeResult) -> None:
    m = result.metrics
    for key, value in m.items():
        if key in ("config", "machine", "spread", "samples"):
            continue
        if _storable(value):
            trial.set_user_attr(key, value)
    trial.set_user_attr("spread", m.get("spread", {}))
    trial.set_user_attr("samples", m.get("samples", {}))
    trial.set_user_attr("probe_config", m.get("config", {}))
    machine = m.get("machine")
    if isinstance(machine, dict):
        mid = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:16]
        trial.set_user_attr("machine_id", mid)
        if "machine" not in study.user_attrs:
            study.set_user_attr("machine", machine)
            study.set_user_attr("machine_id", mid)


def store_noise_floor(study: optuna.Study, metrics: dict[str, Any], machine: str) -> None:
    """Spread of the repeated baseline, absolute and relative to its median, per metric.

    Per machine as `noise_floor_<fingerprint>`; `noise_floor` is the study's first machine's.
    """
    floor: dict[str, dict[str, float]] = {}
    for name, spread in (metrics.get("spread") or {}).items():
        median = metrics.get(name)
        if not isinstance(spread, int | float) or not isinstance(median, int | float):
            continue
        rel = abs(spread / median) if median else 0.0
        floor[name] = {"spread": float(spread), "relative": rel}
    study.set_user_attr(f"noise_floor_{machine}", floor)
    if study.user_attrs.get(fleet.MACHINE_KEY, machine) == machine:
        study.set_user_attr("noise_floor", floor)


def fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr("fail_reason", reason)
    study.tell(trial, state=TrialState.FAIL)


def requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    # An enqueued trial's own params (the baseline's defaults), even if Ctrl-C cut suggest short.
    params = {**OptunaInternals(study).fixed_params(trial), **trial.params}
    study.enqueue_trial(params, user_attrs=retry_attrs(trial.number, trial.user_attrs))
