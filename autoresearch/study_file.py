"""Study files: which model, which probes, which space, what to optimize, under what limits.

Format (paths are relative to the study file; see studies/demo.toml):

    [study]
    name = "demo"                  # default: the file's stem
    storage = "sqlite:///x.db"     # default: sqlite:///<study dir>/<name>.db; see backends.py
                                   # postgresql://user@host/db, journal:///shared/x.log,
                                   # ${VAR} from the environment (passwords: never in the file)
    machines = "one"               # "fleet": workers on different machines; fronts per machine
    heartbeat_interval = 60        # s; a worker silent for grace_period has its trial retried
    grace_period = 180             # s (default 3 x heartbeat_interval)
    cache_dir = "~/cache"          # models/stores/locks; default $XDG_CACHE_HOME/moe-autoresearch
                                   # ($AUTORESEARCH_CACHE_DIR overrides both)
    space = "../search_spaces/default.toml"
    sampler = "auto"               # auto | tpe | gp | random | nsga2 (autoresearch/sampler.py)
    seed = 0                       # sampler seed; omit for a random one
    n_trials = 20                  # trials per `autoresearch run` (CLI --n-trials overrides)
    timeout_s = 3600               # wall clock per `autoresearch run` (CLI --timeout overrides)
    repeats = 1                    # probe repeats per trial (medians + spread are stored)
    baseline_repeats = 3           # repeats of the baseline trial: the study's noise floor
    trial_timeout_s = 600          # a trial's probe is killed after this and recorded FAIL
    cold = true                    # cold (page cache evicted) or warm runs; never mixed
    expert_memory_fraction = 0.3   # every trial's RAM budget, baseline included: the model's
                                   # minimum + this share of its expert bytes at the source
                                   # checkpoint's precision (the same bytes for every store
                                   # variant; instead of a memory_bytes constraint's budget)

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

from autoresearch import study_parts as sp
from autoresearch.backends import mask, resolve
from autoresearch.cachedir import resolve_cache_dir
from autoresearch.errors import AutoresearchError, StudyFileError
from autoresearch.space import Space, load_space
from autoresearch.study_parts import DEFAULT_OBJECTIVES, KEYS, SAMPLERS, Constraint
from engine.api import read_toml

__all__ = ["DEFAULT_OBJECTIVES", "KEYS", "SAMPLERS", "Constraint", "StudySpec", "load_study_file"]


@dataclass(frozen=True)
class StudySpec:
    """A validated study file."""

    path: Path
    name: str
    storage: str  # the URL with any password masked: safe to print (status, show, export)
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
    # The URL to open (password and ${VAR}s filled in): never printed, never stored.
    storage_secret: str = field(default="", repr=False, compare=False)
    cache_dir: Path = field(default=Path("."))  # models, stores, the probe lock (cachedir.py)
    machines: str = "one"  # "fleet": workers may differ; fronts and export per machine
    heartbeat_interval: int | None = 60
    grace_period: int | None = 180
    probe_prompts: int = 1  # screen = "probe": the cheap probe's size
    probe_decode_tokens: int = 16
    racing: Any = None  # autoresearch.racing.RacingSpec; None = fixed repeats
    # Every trial's memory budget, baseline included, relative to the model (the engine's
    # expert_memory_fraction): keeps a study in the streaming regime on any machine.
    expert_memory_fraction: float | None = None

    @property
    def storage_url(self) -> str:
        return self.storage_secret or self.storage

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


def load_study_file(path: str | Path, *, storage: str | None = None) -> StudySpec:
    """Read and check a study file; `storage` (the CLI's --storage) replaces study.storage."""
    path = Path(path)
    try:
        doc = read_toml(path, "study file", StudyFileError)
    except UnicodeDecodeError as e:
        raise StudyFileError(
            f"{path}: not UTF-8 text (bad byte at offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:  # permission denied, a FIFO, an I/O error
        raise StudyFileError(f"{path}: cannot read the study file ({e.strerror})") from None
    allowed = {"study", "model", "probe", "objectives", "constraints", "fidelity", "racing"}
    bad = sorted(set(doc) - allowed)
    if bad:
        shown = ", ".join(sp.key_text(b) for b in bad)
        raise StudyFileError(f"{path}: unknown table(s) {shown}; allowed: {allowed}")
    here = path.resolve().parent
    st = sp.table(path, doc, "study")
    for key in ("study", "model", "probe", "fidelity"):
        sp.known_keys(path, key, doc.get(key))
    sp.no_nul_paths(path, doc)
    name = st.get("name", path.stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise StudyFileError(f"{path}: study.name must be letters, digits, - and _; got {name!r}")
    if not isinstance(st.get("space"), str):
        raise StudyFileError(f"{path}: study.space must be a search space TOML path (a string)")
    if not isinstance(st.get("storage", ""), str):
        raise StudyFileError(f"{path}: study.storage must be a URL string, got {st['storage']!r}")
    if not isinstance(st.get("cold", True), bool):
        raise StudyFileError(f"{path}: study.cold must be true or false, got {st['cold']!r}")
    space = _space(path, here, st["space"])
    sampler = st.get("sampler", "auto")
    if sampler not in SAMPLERS:
        raise StudyFileError(f"{path}: study.sampler must be one of {SAMPLERS}, got {sampler!r}")
    objectives = sp.objectives(path, doc.get("objectives"))
    constraints = sp.constraints(path, doc.get("constraints", {}))
    synth, model_path, store_path = sp.model(path, here, sp.table(path, doc, "model"))
    if store_path is not None and space.varies_store:
        raise StudyFileError(
            f"{path}: model.store is a fixed store but {space.path} varies quant_bits/"
            "quant_group_size/layout; give model.path or model.synth so variants can be packed"
        )
    probe = doc.get("probe", {})
    if not isinstance(probe, dict) or not isinstance(probe.get("suite", ""), str):
        raise StudyFileError(f"{path}: [probe] must be a table; probe.suite a path string")
    suite = (here / probe["suite"]).resolve() if "suite" in probe else None
    if suite is not None and not suite.is_file():
        note = sp.relative_note(probe["suite"], suite, here)
        raise StudyFileError(f"{path}: probe.suite: {suite} not found{note}")
    cmd = probe.get("probe_command")
    if cmd is not None and (not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd)):
        raise StudyFileError(f"{path}: probe.probe_command must be a list of strings")
    screen, keep = sp.fidelity(path, doc.get("fidelity", {}), space)
    from autoresearch.racing import parse_racing

    fid = doc.get("fidelity", {})
    cheap = {
        k: sp.opt_int(path, fid, k, 1, "fidelity") for k in ("probe_prompts", "probe_decode_tokens")
    }
    fraction = st.get("expert_memory_fraction")
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1
    ):
        raise StudyFileError(
            f"{path}: study.expert_memory_fraction must be a number in (0, 1], got {fraction!r}"
        )
    where = f"{path}: {'--storage' if storage is not None else 'study.storage'}"
    raw_url = storage if storage is not None else st.get("storage", f"sqlite:///{name}.db")
    url = resolve(raw_url, here, where)
    out = sp.scale_out(path, st)
    try:
        cache_dir = resolve_cache_dir(out["cache_dir"], here)
    except RuntimeError as e:  # "~user" of a user that does not exist
        raise StudyFileError(f"{path}: study.cache_dir: {e}") from None
    return StudySpec(
        path=path,
        name=name,
        storage=mask(url),
        storage_secret=url,
        space=space,
        sampler=sampler,
        seed=sp.opt_int(path, st, "seed", 0),
        n_trials=sp.opt_int(path, st, "n_trials", 1),
        timeout_s=sp.opt_num(path, st, "timeout_s"),
        repeats=sp.opt_int(path, st, "repeats", 1) or 1,
        baseline_repeats=sp.opt_int(path, st, "baseline_repeats", 1) or 3,
        trial_timeout_s=sp.opt_num(path, st, "trial_timeout_s") or 600.0,
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
        cache_dir=cache_dir,
        machines=out["machines"],
        heartbeat_interval=out["heartbeat_interval"],
        grace_period=out["grace_period"],
        probe_prompts=cheap["probe_prompts"] or 1,
        probe_decode_tokens=cheap["probe_decode_tokens"] or 16,
        racing=parse_racing(path, doc.get("racing")),
        expert_memory_fraction=None if fraction is None else float(fraction),
    )


def _space(path: Path, here: Path, raw: str) -> Space:
    """The search space, relative to the study file; a missing one names both paths."""
    target = (here / raw).resolve()
    if not target.is_file():
        note = sp.relative_note(raw, target, here)
        raise StudyFileError(
            f"{path}: study.space: {target} not found{note}; fix the path or copy the space"
        )
    try:
        return load_space(target)
    except AutoresearchError as e:
        raise StudyFileError(f"{path}: study.space: {e}") from None
    except UnicodeDecodeError as e:
        raise StudyFileError(
            f"{path}: study.space: {target} is not UTF-8 text (bad byte at offset {e.start})"
        ) from None
