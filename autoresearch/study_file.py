"""Study files: which model, which probes, which space, what to optimize, under what limits.

Format (paths are relative to the study file; see studies/demo.toml):

    [study]
    name = "demo"                  # default: the file's stem
    storage = "sqlite:///x.db"     # default: sqlite:///<study dir>/<name>.db
    space = "../search_spaces/default.toml"
    sampler = "auto"               # auto | tpe | gp | random | nsga2 (autoresearch/sampler.py)
    seed = 0                       # sampler seed; omit for a random one
    n_trials = 20                  # trials per `autoresearch run` (CLI --n-trials overrides)
    timeout_s = 3600               # wall clock per `autoresearch run` (CLI --timeout overrides)
    repeats = 1                    # probe repeats per trial (medians + spread are stored)
    baseline_repeats = 3           # repeats of the baseline trial: the study's noise floor
    trial_timeout_s = 600          # a trial's probe is killed after this and recorded FAIL
    cold = true                    # cold (page cache evicted) or warm runs; never mixed

    [model]                        # exactly one of:
    synth = { family = "qwen3_moe", preset = "small", seed = 0 }   # built once, cached
    # path = "checkpoints/my-moe"  # an HF or mlx-community checkpoint directory
    # store = "stores/my-moe"      # a packed store (fixed: no quant/layout variants)

    [probe]
    suite = "suite.toml"           # optional: default the checkpoint's probe_suite.toml

    [[objectives]]                 # default: max decode_tok_s, min memory_bytes, min kl_mean
    metric = "decode_tok_s"
    direction = "maximize"

    [constraints]                  # metric = { max = x } or { min = x }; via Trial.set_constraint
    memory_bytes = { max = 8_000_000_000 }   # also handed to the engine as memory_budget_bytes
    kl_mean = { max = 0.05 }
    latency_p99_s = { max = 0.5 }

    [fidelity]
    screen = "none"                # "trace": screen candidates with the trace simulator first;
                                   # "probe": a short probe first (autoresearch/fidelity.py)
    keep = 0.8                     # trace: measure those estimated >= keep x the best so far
    probe_prompts = 1              # probe: the cheap probe's prompts and decode tokens each
    probe_decode_tokens = 16

    [racing]                       # adaptive repeats (autoresearch/racing.py); absent = off
    max_repeats = 3                # a trial is re-measured only while noise could flip it
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import AutoresearchError, StudyFileError
from autoresearch.sampler import SAMPLERS
from autoresearch.space import Space, load_space
from engine.synth_generic import SYNTH_FAMILIES  # every family engine synth builds
from engine.tomlfile import read_toml

# Numeric fields of the probe's metrics JSON: what objectives and constraints may name.
METRICS = (
    "ttft_s",
    "prefill_tok_s",
    "decode_tok_s",
    "latency_p50_s",
    "latency_p99_s",
    "latency_max_s",
    "bytes_read_per_token",
    "cache_hit_rate",
    "prefetch_precision",
    "prefetch_recall",
    "io_stall_fraction",
    "peak_rss_bytes",
    "page_cache_bytes",
    "memory_bytes",
    "kl_mean",
    "top1_agreement",
    "tokens",
)
DEFAULT_OBJECTIVES = (
    ("decode_tok_s", "maximize"),
    ("memory_bytes", "minimize"),
    ("kl_mean", "minimize"),
)

# The keys each table may hold: a misspelt key would otherwise be ignored silently.
KEYS = {
    "study": {"name", "storage", "space", "sampler", "seed", "n_trials", "timeout_s",
              "repeats", "baseline_repeats", "trial_timeout_s", "cold"},
    "model": {"synth", "path", "store"},
    "model.synth": {"family", "preset", "seed"},
    "probe": {"suite", "probe_command"},
    "fidelity": {"screen", "keep", "probe_prompts", "probe_decode_tokens"},
}  # fmt: skip
SYNTH_PRESETS = (  # = engine.synth_presets.ALL_PRESETS, kept here so loading a study skips mlx
    "tiny", "small", "bench",
    "qwen3-30b-a3b", "olmoe-1b-7b", "mixtral-8x7b", "kimi-k2", "qwen3.5-397b-a17b",
)  # fmt: skip


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


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    path: Path
    name: str
    storage: str
    space: Space
    sampler: str = "auto"  # GP for small budgets when torch is installed, else TPE
    seed: int | None = None
    n_trials: int | None = None
    timeout_s: float | None = None
    repeats: int = 1
    baseline_repeats: int = 3
    trial_timeout_s: float = 600.0
    cold: bool = True
    synth: dict[str, Any] | None = None
    model_path: Path | None = None
    store_path: Path | None = None
    suite: Path | None = None
    objectives: tuple[tuple[str, str], ...] = DEFAULT_OBJECTIVES
    constraints: tuple[Constraint, ...] = ()
    # Tests only: argv template for the probe child ({python} {store} {config} {repeats} {mode}).
    probe_command: tuple[str, ...] | None = None
    work_dir: Path = field(default=Path("."))
    screen: str = "none"  # "trace" | "probe": cheap first fidelity (screen.py, fidelity.py)
    screen_keep: float = 0.8
    probe_prompts: int = 1  # screen = "probe": the cheap probe's size
    probe_decode_tokens: int = 16
    racing: Any = None  # autoresearch.racing.RacingSpec; None = fixed repeats

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def memory_budget(self) -> int | None:
        for c in self.constraints:
            if c.metric == "memory_bytes" and c.max is not None:
                return int(c.max)
        return None

    def identity(self) -> dict[str, Any]:
        """What makes stored trials comparable; a change here needs a new study name."""
        return {
            "objectives": [list(o) for o in self.objectives],
            "constraints": [[c.metric, c.max, c.min] for c in self.constraints],
            "space": self.space.digest(),
            # Relative to the study file, so moving a checkout keeps the study compatible.
            "model": self.synth or _rel(self.model_path or self.store_path, self.work_dir),
            "suite": _rel(self.suite, self.work_dir) if self.suite else None,
            "cold": self.cold,
        }

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()


def _rel(p: Path | None, base: Path) -> str:
    return os.path.relpath(p, base) if p is not None else ""


def load_study_file(path: str | Path) -> StudySpec:
    path = Path(path)
    doc = read_toml(path, "study file", StudyFileError)
    allowed = {"study", "model", "probe", "objectives", "constraints", "fidelity", "racing"}
    bad = sorted(set(doc) - allowed)
    if bad:
        raise StudyFileError(f"{path}: unknown table(s) {', '.join(bad)}; allowed: {allowed}")
    here = path.resolve().parent
    st = _table(path, doc, "study")
    for key in ("study", "model", "probe", "fidelity"):
        _known_keys(path, key, doc.get(key))
    name = st.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise StudyFileError(f"{path}: study.name must be letters, digits, - and _; got {name!r}")
    if not isinstance(st.get("space"), str):
        raise StudyFileError(f"{path}: study.space must be a search space TOML path (a string)")
    if not isinstance(st.get("storage", ""), str):
        raise StudyFileError(f"{path}: study.storage must be a URL string, got {st['storage']!r}")
    if not isinstance(st.get("cold", True), bool):
        raise StudyFileError(f"{path}: study.cold must be true or false, got {st['cold']!r}")
    try:
        space = load_space(here / st["space"])
    except AutoresearchError as e:
        raise StudyFileError(f"{path}: study.space: {e}") from None
    sampler = st.get("sampler", "auto")
    if sampler not in SAMPLERS:
        raise StudyFileError(f"{path}: study.sampler must be one of {SAMPLERS}, got {sampler!r}")
    objectives = _objectives(path, doc.get("objectives"))
    constraints = _constraints(path, doc.get("constraints", {}))
    synth, model_path, store_path = _model(path, here, _table(path, doc, "model"))
    if store_path is not None and space.varies_store:
        raise StudyFileError(
            f"{path}: model.store is a fixed store but {space.path} varies quant_bits/"
            "quant_group_size/layout; give model.path or model.synth so variants can be packed"
        )
    probe = doc.get("probe", {})
    if not isinstance(probe, dict) or not isinstance(probe.get("suite", ""), str):
        raise StudyFileError(f"{path}: [probe] must be a table; probe.suite a path string")
    suite = here / probe["suite"] if "suite" in probe else None
    if suite is not None and not suite.is_file():
        raise StudyFileError(f"{path}: probe.suite: {suite} not found")
    cmd = probe.get("probe_command")
    if cmd is not None and (not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd)):
        raise StudyFileError(f"{path}: probe.probe_command must be a list of strings")
    screen, keep = _fidelity(path, doc.get("fidelity", {}), space)
    from autoresearch.racing import parse_racing

    fid = doc.get("fidelity", {})
    cheap = {k: _opt_int(path, fid, k, 1, "fidelity")
             for k in ("probe_prompts", "probe_decode_tokens")}  # fmt: skip
    storage = st.get("storage", f"sqlite:///{here / (name + '.db')}")
    return StudySpec(
        path=path,
        name=name,
        storage=storage,
        space=space,
        sampler=sampler,
        seed=_opt_int(path, st, "seed", 0),
        n_trials=_opt_int(path, st, "n_trials", 1),
        timeout_s=_opt_num(path, st, "timeout_s"),
        repeats=_opt_int(path, st, "repeats", 1) or 1,
        baseline_repeats=_opt_int(path, st, "baseline_repeats", 1) or 3,
        trial_timeout_s=_opt_num(path, st, "trial_timeout_s") or 600.0,
        cold=st.get("cold", True),
        synth=synth,
        model_path=model_path,
        store_path=store_path,
        suite=suite,
        objectives=objectives,
        constraints=constraints,
        probe_command=tuple(cmd) if cmd else None,
        work_dir=here,
        screen=screen,
        screen_keep=keep,
        probe_prompts=cheap["probe_prompts"] or 1,
        probe_decode_tokens=cheap["probe_decode_tokens"] or 16,
        racing=parse_racing(path, doc.get("racing")),
    )


def _fidelity(path: Path, t: Any, space: Space) -> tuple[str, float]:
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
    return screen, float(keep)


def _known_keys(path: Path, key: str, t: Any) -> None:
    if not isinstance(t, dict):
        return  # absent, or not a table: reported where the table is read
    bad = sorted(set(t) - KEYS[key])
    if bad:
        raise StudyFileError(
            f"{path}: unknown key(s) {', '.join(f'{key}.{b}' for b in bad)}; "
            f"[{key}] may hold {', '.join(sorted(KEYS[key]))}"
        )
    if key == "model":
        _known_keys(path, "model.synth", t.get("synth"))


def _table(path: Path, doc: dict[str, Any], key: str) -> dict[str, Any]:
    t = doc.get(key)
    if not isinstance(t, dict):
        raise StudyFileError(f"{path}: [{key}] table is missing")
    return t


def _opt_int(
    path: Path, t: dict[str, Any], key: str, minimum: int, table: str = "study"
) -> int | None:
    v = t.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
        raise StudyFileError(f"{path}: {table}.{key} must be an integer >= {minimum}, got {v!r}")
    return v


def _opt_num(path: Path, t: dict[str, Any], key: str) -> float | None:
    v = t.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0):
        raise StudyFileError(f"{path}: study.{key} must be a number of seconds > 0, got {v!r}")
    return float(v) if v is not None else None


def _objectives(path: Path, objs: Any) -> tuple[tuple[str, str], ...]:
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
        if direction not in ("maximize", "minimize"):
            raise StudyFileError(
                f"{path}: objectives[{i}].direction must be 'maximize' or 'minimize'"
            )
        out.append((metric, direction))
    if len({m for m, _ in out}) != len(out):
        raise StudyFileError(f"{path}: [[objectives]] names a metric twice")
    return tuple(out)


def _constraints(path: Path, table: Any) -> tuple[Constraint, ...]:
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
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise StudyFileError(f"{path}: {key}.{kind} must be a number, got {v!r}")
        out.append(Constraint(metric, **{kind: float(v)}))
    return tuple(out)


def _model(
    path: Path, here: Path, m: dict[str, Any]
) -> tuple[dict[str, Any] | None, Path | None, Path | None]:
    given = [k for k in ("synth", "path", "store") if k in m]
    if len(given) != 1:
        raise StudyFileError(f"{path}: [model] needs exactly one of synth, path, store")
    if "synth" in given:
        s = m["synth"]
        if not isinstance(s, dict) or s.get("family") not in SYNTH_FAMILIES:
            raise StudyFileError(f"{path}: model.synth.family must be one of {SYNTH_FAMILIES}")
        if s.get("preset", "tiny") not in SYNTH_PRESETS:
            raise StudyFileError(f"{path}: model.synth.preset must be one of {SYNTH_PRESETS}")
        seed = s.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise StudyFileError(f"{path}: model.synth.seed must be an integer >= 0, got {seed!r}")
        spec = {"family": s["family"], "preset": s.get("preset", "tiny"), "seed": seed}
        return spec, None, None
    if not isinstance(m[given[0]], str):
        raise StudyFileError(f"{path}: model.{given[0]} must be a path string, got {m[given[0]]!r}")
    p = here / m[given[0]]
    if given == ["path"]:
        if not (p / "config.json").is_file():
            raise StudyFileError(f"{path}: model.path: {p} is not a checkpoint (no config.json)")
        return None, p, None
    if not p.is_dir():
        raise StudyFileError(f"{path}: model.store: {p} not found; pack one with `moe-engine pack`")
    return None, None, p
