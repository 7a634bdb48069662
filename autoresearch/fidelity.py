"""Cheap first fidelity: a short probe (fewer, shorter prompts) before the full one.

`[fidelity] screen = "probe"` runs every non-baseline trial first on a cut-down copy of the
suite (`probe_prompts` prompts, `probe_decode_tokens` each). Only a candidate whose cheap
figures could still reach the front of the cheap figures seen so far (with a tolerance for the
short probe's extra noise) is promoted to the full probe; the rest are told PRUNED with their
cheap metrics attached, so the study holds full measurements only. Cheap figures are compared
with cheap figures, never with full ones: a short probe is biased (fewer sustained tokens).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

import optuna
import tomli_w

from autoresearch.errors import AutoresearchError
from autoresearch.racing import Direction, could_be_on_front, noise_of
from engine.api import default_suite_path, read_toml

SAVED_KEY = "fidelity_full_probes_saved"  # study user attr: pruned after the cheap probe
CHEAP_KEY = "cheap_metrics"  # trial user attr: the cheap probe's figures


class FidelityError(AutoresearchError):
    """The cheap suite could not be written from the full one."""


def cheap_suite(full: Path, out: Path, *, prompts: int, decode_tokens: int) -> Path:
    """Write the first `prompts` prompts of `full` with `decode_tokens` each to `out`."""
    doc = read_toml(full, "probe suite", FidelityError)
    entries = doc.get("prompts", [])
    if not isinstance(entries, list) or not entries:
        raise FidelityError(f"{full}: no [[prompts]] to cut a cheap probe from")
    warmup = int(doc.get("warmup_tokens", 4))
    if decode_tokens <= warmup:
        raise FidelityError(
            f"{full}: probe_decode_tokens ({decode_tokens}) must exceed the suite's "
            f"warmup_tokens ({warmup}), or no decode token is measured"
        )
    cut = {**doc, "prompts": [dict(p, decode_tokens=decode_tokens) for p in entries[:prompts]]}
    if "generated" in doc:  # a suite of generated prompts (no tokenizer) is cut the same way
        cut["generated"] = {**doc["generated"], "prompts": prompts, "decode_tokens": decode_tokens}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(tomli_w.dumps(cut))
    return out


WARMUP = 3  # the first cheap results are always promoted: there is little to compare with
MIN_TOLERANCE = 0.05  # a short probe is noisier than the floor measured on full ones


def promote(
    values: list[float],
    seen: list[list[float]],
    directions: list[Direction],
    tolerance: list[float],
    warmup: int = WARMUP,
) -> bool:
    """Promote when few cheap results exist or these could be on the cheap results' front."""
    return len(seen) < warmup or could_be_on_front(values, seen, directions, tolerance)


def cheap_probe(
    study: optuna.Study, trial: optuna.Trial, spec: Any, store_path: Path, run: Any
) -> bool:
    """Run the cheap probe via run(suite) -> ProbeResult; True = go on to the full probe.

    A failed cheap probe promotes: the full probe then records the failure with its reason.
    """
    full = spec.suite or default_suite_path(store_path)
    # Named by the full suite's path and the cut: two studies on one machine never share one.
    tag = hashlib.sha256(str(Path(full).resolve()).encode()).hexdigest()[:12]
    name = f"{tag}-{spec.probe_prompts}x{spec.probe_decode_tokens}.toml"
    out = Path(tempfile.gettempdir()) / "autoresearch-cheap" / name
    suite = cheap_suite(
        full, out, prompts=spec.probe_prompts, decode_tokens=spec.probe_decode_tokens
    )
    res = run(suite)
    if res.error is not None:
        return True
    names = [m for m, _ in spec.objectives]
    values = cheap_values(res.metrics, names)
    seen = [
        t.user_attrs[CHEAP_KEY]
        for t in study.get_trials(deepcopy=False)
        if CHEAP_KEY in t.user_attrs
    ]
    seen = [[float(v[n]) for n in names] for v in seen if all(n in v for n in names)]
    noise = noise_of(study.user_attrs.get("noise_floor", {}), names)
    tol = [max(2 * x, MIN_TOLERANCE) for x in noise]
    trial.set_user_attr(CHEAP_KEY, dict(zip(names, values, strict=True)))
    ok = promote(values, seen, [d for _, d in spec.objectives], tol)
    trial.set_user_attr("fidelity", "promoted" if ok else "cheap only")
    if not ok:
        record_saved(study)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return ok


def saved(study: optuna.Study) -> int:
    """How many full probes the cheap fidelity saved so far (trials pruned after it)."""
    return int(study.user_attrs.get(SAVED_KEY, 0))


def record_saved(study: optuna.Study) -> None:
    study.set_user_attr(SAVED_KEY, saved(study) + 1)


def cheap_values(metrics: dict[str, Any], names: list[str]) -> list[float]:
    return [float(metrics[n]) for n in names]
