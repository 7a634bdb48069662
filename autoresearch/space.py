"""Search spaces: a TOML file of EngineConfig knobs with ranges, choices and conditions.

Format (see search_spaces/default.toml):

    [fixed]                       # optional: knobs held constant in every trial
    compute_dtype = "float32"

    [knobs.io_threads]            # an int range: low/high ints, optional step or log
    low = 1
    high = 16
    log = true

    [knobs.cache_policy]          # a categorical knob
    choices = ["lru", "lfu", "pinned"]

    [knobs.pinned_fraction]       # a float range, active only when a condition holds
    low = 0.1
    high = 0.9
    when = { cache_policy = { in = ["pinned"] } }

Condition operators: in, not_in, lt, le, gt, ge; several conditions on one knob all must hold.
A condition may only name a knob defined earlier in the same file (knobs are sampled in order).

`cache_fraction` is a virtual knob: cache_bytes = cache_fraction x the total expert bytes of the
store the trial runs on, so one space fits every model size and quantization variant.
`experts_fraction` is one too: experts_per_token = round(experts_fraction x the model's top-k),
at least 1, so a space written for top-k 8 never runs a top-k 4 model with 8 experts. A
fraction above 1 (more experts than the model routes) is allowed only when the space says so
(high > 1); an absolute `experts_per_token` above the model's top-k is clamped to the top-k.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from autoresearch.errors import SpaceError
from engine.api import read_toml
from engine.config import EngineConfig
from engine.contract import KNOBS
from engine.errors import ConfigError

# Virtual knob -> the EngineConfig knob it sets; mapped in `to_config`.
VIRTUAL_KNOBS = {"cache_fraction": "cache_bytes", "experts_fraction": "experts_per_token"}
MAX_EXPERTS_FRACTION = 2.0  # beyond twice the routed experts a model is no longer itself
# Knobs that select a store variant (built by autoresearch.variants) rather than a runtime knob.
VARIANT_KNOBS = ("quant_bits", "quant_group_size", "layout")
OPERATORS = ("in", "not_in", "lt", "le", "gt", "ge")


@dataclass(frozen=True)
class Knob:
    """One searched knob: a range (low/high/step/log) or choices, plus its conditions."""

    name: str
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    when: dict[str, dict[str, Any]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """True when every condition holds on the knobs sampled so far."""
        for other, ops in self.when.items():
            if other not in values:
                return False  # the knob it depends on is itself inactive
            v = values[other]
            for op, arg in ops.items():
                ok = {
                    "in": lambda v, a: v in a,
                    "not_in": lambda v, a: v not in a,
                    "lt": lambda v, a: v < a,
                    "le": lambda v, a: v <= a,
                    "gt": lambda v, a: v > a,
                    "ge": lambda v, a: v >= a,
                }[op](v, arg)
                if not ok:
                    return False
        return True

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int):
            step = int(self.step) if self.step is not None else 1
            return trial.suggest_int(self.name, self.low, self.high, step=step, log=self.log)
        assert self.low is not None and self.high is not None
        return trial.suggest_float(
            self.name, float(self.low), float(self.high), step=self.step, log=self.log
        )

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this knob's domain (used to enqueue the baseline)."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if not self.low <= value <= self.high:
            return False
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(value, int):
            return False
        return self.step is None or abs(((value - self.low) / self.step) % 1) < 1e-9


@dataclass(frozen=True)
class Space:
    """A validated search space: knobs in sampling order plus fixed knob values."""

    path: Path
    knobs: tuple[Knob, ...]
    fixed: dict[str, Any]

    @property
    def names(self) -> list[str]:
        return [k.name for k in self.knobs]

    @property
    def varies_store(self) -> bool:
        return any(k.name in VARIANT_KNOBS for k in self.knobs)

    def suggest(self, trial: optuna.Trial, only: set[str] | None = None) -> dict[str, Any]:
        """Sample the active knobs in file order; `only` restricts to those names (baseline)."""
        values: dict[str, Any] = {}
        for knob in self.knobs:
            if only is not None and knob.name not in only:
                continue
            if knob.active(values):
                values[knob.name] = knob.suggest(trial)
        return values

    def baseline_params(self) -> dict[str, Any]:
        """The engine's default value of each knob that this space can represent exactly."""
        defaults = EngineConfig().to_dict()
        values: dict[str, Any] = {}
        for k in self.knobs:
            if k.name in defaults and k.contains(defaults[k.name]) and k.active(values):
                values[k.name] = defaults[k.name]
        return values

    def digest(self) -> str:
        """Hash of what the space means (not its comments), to detect incompatible edits."""
        doc = {
            "fixed": self.fixed,
            "knobs": [
                [k.name, k.low, k.high, k.step, k.log, k.choices, k.when] for k in self.knobs
            ],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=list).encode()).hexdigest()


def to_config(
    knobs: dict[str, Any],
    *,
    expert_bytes: int,
    extra: dict[str, Any] | None = None,
    top_k: int | None = None,
) -> EngineConfig:
    """Sampled knobs (+ fixed/extra) -> EngineConfig; maps virtual knobs. Raises ConfigError.

    top_k: the model's routed experts per token; experts_fraction needs it, and an absolute
    experts_per_token above it is clamped to it (None: no model known, values pass as given).
    """
    data = dict(extra or {})
    for name, value in knobs.items():
        if name == "cache_fraction":
            # Round down to whole 4 KiB pages: caches hold page-aligned expert buffers.
            data["cache_bytes"] = int(value * expert_bytes) // 4096 * 4096
        elif name == "experts_fraction":
            if top_k is None:
                raise ConfigError("experts_fraction needs the model's top-k; none was given")
            data["experts_per_token"] = max(1, int(value * top_k + 0.5))
        elif name == "experts_per_token" and top_k is not None and value is not None:
            data[name] = min(int(value), top_k)
        else:
            data[name] = value
    return EngineConfig.from_dict(data, source="trial")


def load_space(path: str | Path) -> Space:
    path = Path(path)
    doc = read_toml(path, "search space file", SpaceError)
    extra = sorted(set(doc) - {"knobs", "fixed"})
    if extra:
        raise SpaceError(f"{path}: unknown table(s) {', '.join(extra)}; allowed: [knobs], [fixed]")
    known = [*KNOBS, *VIRTUAL_KNOBS]
    fixed = doc.get("fixed", {})
    if not isinstance(fixed, dict):
        raise SpaceError(f"{path}: [fixed] must be a table of knob = value")
    for name in fixed:
        _check_known(path, f"fixed.{name}", name, known)
    _engine_accepts(path, "fixed", dict(fixed))
    if "cache_fraction" in fixed:
        _fraction(path, "fixed", fixed["cache_fraction"])
    if "experts_fraction" in fixed:
        _experts_fraction(path, "fixed", fixed["experts_fraction"])
    table = doc.get("knobs", {})
    if not isinstance(table, dict) or not table:
        raise SpaceError(f"{path}: [knobs] must hold at least one [knobs.<name>] table")
    knobs: list[Knob] = []
    for name, spec in table.items():
        key = f"knobs.{name}"
        _check_known(path, key, name, known)
        if name in fixed:
            raise SpaceError(
                f"{path}: {key} is also in [fixed]; a knob is either fixed or searched"
            )
        if not isinstance(spec, dict):
            raise SpaceError(f"{path}: {key} must be a table (low/high or choices)")
        knobs.append(_parse_knob(path, key, name, spec, {k.name: k for k in knobs}))
    names = [k.name for k in knobs] + list(fixed)
    if "cache_fraction" in names and "cache_bytes" in names:
        raise SpaceError(f"{path}: give cache_fraction or cache_bytes, not both")
    if "experts_fraction" in names and "experts_per_token" in names:
        raise SpaceError(f"{path}: give experts_fraction or experts_per_token, not both")
    return Space(path=path, knobs=tuple(knobs), fixed=dict(fixed))


def _check_known(path: Path, key: str, name: str, known: list[str]) -> None:
    if name not in known:
        raise SpaceError(
            f"{path}: {key}: unknown knob {name!r}; known knobs are {', '.join(known)}"
        )


def _parse_knob(
    path: Path, key: str, name: str, spec: dict[str, Any], before: dict[str, Knob]
) -> Knob:
    allowed = {"low", "high", "step", "log", "choices", "when"}
    bad = sorted(set(spec) - allowed)
    if bad:
        raise SpaceError(f"{path}: {key}: unknown field(s) {', '.join(bad)}; allowed: {allowed}")
    when = _parse_when(path, key, spec.get("when", {}), before)
    if "choices" in spec:
        if {"low", "high", "step", "log"} & set(spec):
            raise SpaceError(f"{path}: {key}: give either choices or low/high, not both")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{path}: {key}.choices must be a non-empty list")
        for c in choices:
            if name == "cache_fraction":
                _fraction(path, f"{key}.choices", c)
            if name == "experts_fraction":
                _experts_fraction(path, f"{key}.choices", c)
            _engine_accepts(path, f"{key}.choices", {name: c})
        return Knob(name=name, choices=tuple(choices), when=when)
    if "low" not in spec or "high" not in spec:
        raise SpaceError(f"{path}: {key}: needs low and high (a range) or choices")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    for field_name, v in (("low", low), ("high", high), ("step", step)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise SpaceError(f"{path}: {key}.{field_name} must be a number, got {v!r}")
    if not isinstance(log, bool):
        raise SpaceError(f"{path}: {key}.log must be true or false")
    if low > high:
        raise SpaceError(f"{path}: {key}: low ({low}) is above high ({high})")
    if log and (low <= 0 or step is not None):
        raise SpaceError(f"{path}: {key}: a log range needs low > 0 and no step")
    if step is not None and step <= 0:
        raise SpaceError(f"{path}: {key}.step must be > 0")
    # The engine is the judge of what a knob accepts: build a config at each bound.
    probes = [low, high] + ([low + step] if step is not None and low + step <= high else [])
    for v in probes:
        if name == "cache_fraction":
            if not 0 <= v <= 1:
                raise SpaceError(f"{path}: {key}: cache_fraction must lie in [0, 1], got {v}")
        elif name == "experts_fraction":
            _experts_fraction(path, key, v)
        else:
            _engine_accepts(path, key, {name: v})
    if name in VIRTUAL_KNOBS or KNOBS[name].type is float:
        low, high = float(low), float(high)  # TOML `0`/`1` are ints: keep a fraction a float
    return Knob(name=name, low=low, high=high, step=step, log=log, when=when)


def _parse_when(
    path: Path, key: str, when: Any, before: dict[str, Knob]
) -> dict[str, dict[str, Any]]:
    if not isinstance(when, dict):
        raise SpaceError(
            f"{path}: {key}.when must be a table like {{ prefetch = {{ not_in = [...] }} }}"
        )
    for other, ops in when.items():
        if other not in before:
            raise SpaceError(
                f"{path}: {key}.when: condition on unknown knob {other!r}; a condition may name "
                f"a knob defined above it in this file: {', '.join(before) or '(none)'}"
            )
        if not isinstance(ops, dict) or not ops or set(ops) - set(OPERATORS):
            raise SpaceError(
                f"{path}: {key}.when.{other} must be a table of operators ({', '.join(OPERATORS)})"
            )
        # Checked here, not when sampling: a bad argument would crash the study mid-trial.
        numeric = before[other].choices is None or all(_is_num(c) for c in before[other].choices)
        for op, arg in ops.items():
            if op in ("in", "not_in") and not isinstance(arg, list):
                raise SpaceError(f"{path}: {key}.when.{other}.{op} must be a list of values")
            if op in ("in", "not_in"):
                continue
            if not numeric:
                raise SpaceError(
                    f"{path}: {key}.when.{other}.{op}: {other} is not numeric; use in or not_in"
                )
            if not _is_num(arg):
                raise SpaceError(f"{path}: {key}.when.{other}.{op} must be a number, got {arg!r}")
    return {k: dict(v) for k, v in when.items()}


def _fraction(path: Path, key: str, v: Any) -> None:
    """cache_fraction is virtual: the engine never sees it, so its range is checked here."""
    if not _is_num(v) or not 0 <= v <= 1:
        raise SpaceError(f"{path}: {key}: cache_fraction must be a number in [0, 1], got {v!r}")


def _experts_fraction(path: Path, key: str, v: Any) -> None:
    """A share of the model's top-k; above 1 asks for more experts than the model routes."""
    if not _is_num(v) or not 0 < v <= MAX_EXPERTS_FRACTION:
        raise SpaceError(
            f"{path}: {key}: experts_fraction must be a number in (0, {MAX_EXPERTS_FRACTION:g}] "
            f"(a share of the model's top-k), got {v!r}"
        )


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _engine_accepts(path: Path, key: str, knobs: dict[str, Any]) -> None:
    data = {k: v for k, v in knobs.items() if k not in VIRTUAL_KNOBS}
    try:
        EngineConfig(**data)
    except ConfigError as e:
        raise SpaceError(f"{path}: {key}: the engine refuses it: {e}") from None
