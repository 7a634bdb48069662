"""The fields of a study file, each checked with an error naming the file and key.

study_file.py assembles these into a StudySpec; this file holds the vocabulary (metrics,
samplers, allowed keys) and one validator per table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoresearch.errors import StudyFileError
from autoresearch.sampler import SAMPLERS  # noqa: F401  (re-exported: tpe|gp|random|nsga2|auto)
from autoresearch.space import Space
from engine import contract

# The metrics objectives and constraints may name, the families and presets model.synth may
# name: engine/contract.py's, never copied here. (Tuples: a TOML value may be unhashable.)
METRICS = tuple(contract.METRICS)
FAMILIES, PRESETS = contract.SYNTH_FAMILIES, contract.SYNTH_PRESETS
# Speed, memory, quality: each in the direction the contract says is better.
DEFAULT_OBJECTIVES = tuple(
    (m, str(contract.METRICS[m].direction)) for m in ("decode_tok_s", "memory_bytes", "kl_mean")
)
# The keys each table may hold: a misspelt key would otherwise be ignored silently.
KEYS = {
    "study": {
        "name",
        "storage",
        "space",
        "sampler",
        "seed",
        "n_trials",
        "timeout_s",
        "repeats",
        "baseline_repeats",
        "trial_timeout_s",
        "cold",
        "cache_dir",
        "machines",
        "heartbeat_interval",
        "grace_period",
        "expert_memory_fraction",
    },
    "model": {"synth", "path", "store"},
    "model.synth": {"family", "preset", "seed"},
    "probe": {"suite", "probe_command"},
    "fidelity": {"screen", "keep", "probe_prompts", "probe_decode_tokens"},
}
MACHINES = ("one", "fleet")  # one: every worker must be this machine; fleet: per-machine fronts
MAX_SECONDS = 30 * 24 * 3600  # beyond this a "timeout" is a typo (and overflows poll timers)
# Limits handed to the engine as a RAM budget must leave room for something to run.
BUDGET_METRICS = ("memory_bytes", "peak_rss_bytes", "page_cache_bytes")


@dataclass(frozen=True)
class Constraint:
    metric: str
    max: float | None = None
    min: float | None = None

    def value(self, metrics: dict[str, Any]) -> float:
        """Optuna's convention: <= 0 is feasible; the amount over the limit otherwise."""
        v = float(metrics[self.metric])
        if self.max is not None:
            return v - self.max
        assert self.min is not None
        return self.min - v


def fidelity(path: Path, t: Any, space: Space) -> tuple[str, float]:
    from autoresearch.screen import unscreenable

    if not isinstance(t, dict):
        raise StudyFileError(f"{path}: [fidelity] must be a table")
    screen = t.get("screen", "none")
    if screen not in ("none", "trace", "probe"):
        raise StudyFileError(
            f"{path}: fidelity.screen must be 'none', 'trace' or 'probe', got {screen!r}"
        )
    keep = t.get("keep", 0.8)
    if isinstance(keep, bool) or not isinstance(keep, int | float) or not 0 < keep <= 1:
        raise StudyFileError(f"{path}: fidelity.keep must be a number in (0, 1], got {keep!r}")
    bad = unscreenable(space.names) if screen == "trace" else []
    if bad:
        raise StudyFileError(
            f"{path}: fidelity.screen = 'trace' needs a space that varies only cache/prefetch "
            f"knobs, but {space.path} varies {', '.join(bad)}; fix them in [fixed] or use "
            "screen = 'none'"
        )
    if screen == "trace":
        for knob, limit in (
            ("prefetch_depth", contract.TRACE_RANK_DEPTH),
            ("prefetch_width", contract.TRACE_RANK_WIDTH),
        ):
            most = _largest(space, knob)
            if most is not None and most > limit:
                raise StudyFileError(
                    f"{path}: fidelity.screen = 'trace' models {knob} up to {limit} (what a "
                    f"routing trace records), but {space.path} reaches {most}; lower it or use "
                    "screen = 'none'"
                )
    return screen, float(keep)


def _largest(space: Space, name: str) -> Any:
    """The largest value the space can give knob `name` (None: it does not vary or fix it)."""
    values = [space.fixed[name]] if name in space.fixed else []
    for k in space.knobs:
        if k.name == name:
            values += list(k.choices) if k.choices is not None else [k.high]
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return max(numbers, default=None)


def key_text(k: object) -> str:
    """A key as a message shows it: bare when TOML would write it bare, else quoted (a key with
    a newline or control character must not break the one-line error)."""
    return k if isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_-]+", k) else repr(k)


def known_keys(path: Path, key: str, t: Any) -> None:
    if not isinstance(t, dict):
        return  # absent, or not a table: reported where the table is read
    bad = sorted(set(t) - KEYS[key])
    if bad:
        raise StudyFileError(
            f"{path}: unknown key(s) {', '.join(f'{key}.{key_text(b)}' for b in bad)}; "
            f"[{key}] may hold {', '.join(sorted(KEYS[key]))}"
        )
    if key == "model":
        known_keys(path, "model.synth", t.get("synth"))


def table(path: Path, doc: dict[str, Any], key: str) -> dict[str, Any]:
    t = doc.get(key)
    if not isinstance(t, dict):
        raise StudyFileError(f"{path}: [{key}] table is missing")
    return t


def opt_int(
    path: Path, t: dict[str, Any], key: str, minimum: int, table: str = "study"
) -> int | None:
    v = t.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise StudyFileError(f"{path}: {table}.{key} must be an integer >= {minimum}, got {v!r}")
    return v


def opt_num(path: Path, t: dict[str, Any], key: str) -> float | None:
    """Seconds: a finite number in (0, 30 days]; inf/nan/1e300 are typos, not "no limit"."""
    v = t.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= MAX_SECONDS:
        raise StudyFileError(
            f"{path}: study.{key} must be a number of seconds in (0, {MAX_SECONDS}] "
            f"(30 days), got {v!r}; leave it out for the default"
        )
    return float(v)


def objectives(path: Path, objs: Any) -> tuple[tuple[str, str], ...]:
    if objs is None:
        return DEFAULT_OBJECTIVES
    if not isinstance(objs, list) or not objs:
        raise StudyFileError(f"{path}: [[objectives]] must be a non-empty array of tables")
    out = []
    for i, o in enumerate(objs):
        if not isinstance(o, dict):
            raise StudyFileError(
                f"{path}: objectives[{i}] must be a table with metric and direction, got {o!r}"
            )
        metric, direction = o.get("metric"), o.get("direction")
        if metric not in METRICS:
            raise StudyFileError(
                f"{path}: objectives[{i}].metric: unknown metric {metric!r}; "
                f"known: {', '.join(METRICS)}"
            )
        if direction not in contract.DIRECTIONS:
            raise StudyFileError(
                f"{path}: objectives[{i}].direction must be 'maximize' or 'minimize'"
            )
        out.append((metric, direction))
    if len({m for m, _ in out}) != len(out):
        raise StudyFileError(f"{path}: [[objectives]] names a metric twice")
    return tuple(out)


def constraints(path: Path, table: Any) -> tuple[Constraint, ...]:
    if not isinstance(table, dict):
        raise StudyFileError(f"{path}: [constraints] must be a table of metric = {{ max = x }}")
    out = []
    for metric, bound in table.items():
        key = f"constraints.{metric}"
        if metric not in METRICS:
            raise StudyFileError(
                f"{path}: {key}: unknown metric {metric!r}; known: {', '.join(METRICS)}"
            )
        if not isinstance(bound, dict) or len(bound) != 1 or set(bound) - {"max", "min"}:
            raise StudyFileError(f"{path}: {key} must be {{ max = x }} or {{ min = x }}")
        ((kind, v),) = bound.items()
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise StudyFileError(f"{path}: {key}.{kind} must be a finite number, got {v!r}")
        # Every metric is >= 0, so a negative max is unsatisfiable: every trial would fail.
        if kind == "max" and (v < 0 or (v == 0 and metric in BUDGET_METRICS)):
            least = "> 0 (a RAM budget in bytes)" if metric in BUDGET_METRICS else ">= 0"
            raise StudyFileError(f"{path}: {key}.max must be {least}, got {v!r}")
        out.append(Constraint(metric, **{kind: float(v)}))
    return tuple(out)


def model(
    path: Path, here: Path, m: dict[str, Any]
) -> tuple[dict[str, Any] | None, Path | None, Path | None]:
    given = [k for k in ("synth", "path", "store") if k in m]
    if len(given) != 1:
        raise StudyFileError(f"{path}: [model] needs exactly one of synth, path, store")
    if "synth" in given:
        s = m["synth"]
        if not isinstance(s, dict) or s.get("family") not in FAMILIES:
            raise StudyFileError(f"{path}: model.synth.family must be one of {FAMILIES}")
        if s.get("preset", "tiny") not in PRESETS:
            raise StudyFileError(f"{path}: model.synth.preset must be one of {PRESETS}")
        seed = s.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StudyFileError(f"{path}: model.synth.seed must be an integer >= 0, got {seed!r}")
        spec = {"family": s["family"], "preset": s.get("preset", "tiny"), "seed": seed}
        return spec, None, None
    if not isinstance(m[given[0]], str):
        raise StudyFileError(f"{path}: model.{given[0]} must be a path string, got {m[given[0]]!r}")
    p = (here / m[given[0]]).resolve()
    rel = relative_note(m[given[0]], p, here)
    if given == ["path"]:
        if not (p / "config.json").is_file():
            raise StudyFileError(
                f"{path}: model.path: {p} is not a checkpoint (no config.json){rel}"
            )
        return None, p, None
    if not p.is_dir():
        raise StudyFileError(
            f"{path}: model.store: {p} not found{rel}; pack one with `moe-engine pack`"
        )
    return None, None, p


PATH_KEYS = (
    ("study", "space"),
    ("study", "storage"),
    ("study", "cache_dir"),
    ("model", "path"),
    ("model", "store"),
    ("probe", "suite"),
)


def no_nul_paths(path: Path, doc: dict[str, Any]) -> None:
    """A NUL byte in a path makes every OS call fail with ValueError: refuse it by name."""
    for table, key in PATH_KEYS:
        t = doc.get(table)
        v = t.get(key) if isinstance(t, dict) else None
        if isinstance(v, str) and "\x00" in v:
            raise StudyFileError(f"{path}: {table}.{key} contains a NUL character; fix the path")


def relative_note(raw: str, resolved: Path, here: Path) -> str:
    """For errors: how a relative path in the study file was resolved (copied study files)."""
    if Path(raw).is_absolute():
        return ""
    return f" ({raw!r} is relative to the study file's directory {here})"


def scale_out(path: Path, st: dict[str, Any]) -> dict[str, Any]:
    """study.machines, heartbeat_interval and grace_period (workers sharing one study)."""
    machines = st.get("machines", "one")
    if machines not in MACHINES:
        raise StudyFileError(
            f"{path}: study.machines must be 'one' (every worker is the same machine) or "
            f"'fleet' (results kept per machine), got {machines!r}"
        )
    out: dict[str, Any] = {"machines": machines}
    for key, default in (("heartbeat_interval", 60), ("grace_period", None)):
        v = st.get(key, default)
        if v is not None and (
            isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_SECONDS
        ):
            raise StudyFileError(
                f"{path}: study.{key} must be a whole number of seconds > 0, got {v!r}"
            )
        out[key] = v
    grace = out["grace_period"] or 3 * out["heartbeat_interval"]
    if grace <= out["heartbeat_interval"]:
        raise StudyFileError(
            f"{path}: study.grace_period ({grace}) must exceed study.heartbeat_interval "
            f"({out['heartbeat_interval']}), or a live worker's trial would be retried"
        )
    out["grace_period"] = grace
    cache = st.get("cache_dir")
    if cache is not None and (not isinstance(cache, str) or not cache.strip()):
        raise StudyFileError(f"{path}: study.cache_dir must be a directory path, got {cache!r}")
    out["cache_dir"] = cache
    return out
