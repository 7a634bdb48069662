"""Shared helpers for the autoresearch tests: a tiny real store, stand-in probe children, a
study of hand-made trials, and short ways to read a study back. Fixtures: conftest.py.

The stand-ins exist only for paths the real probe cannot be made to take on demand (crash,
hang, garbage, being killed mid-trial); their numbers are placeholders, never results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from autoresearch.space import Knob, Space
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec, load_study_file
from engine.config import EngineConfig
from engine.store import Store

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "search_spaces"
_BUILT: dict[str, Path] = {}


def tiny_model_and_store(root: Path) -> tuple[Path, Path]:
    """Synthesize tiny qwen3_moe + pack it once per test session (a few seconds)."""
    if "store" not in _BUILT:
        from engine.pack import pack
        from engine.synth.hf import synthesize

        model, store = root / "tiny-model", root / "tiny-store"
        synthesize(model, "qwen3_moe", "tiny", 0)
        pack(model, store, progress=False)
        _BUILT.update(model=model, store=store)
    return _BUILT["model"], _BUILT["store"]


def process_gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaps (an orphan's new parent may be a non-reaping init)."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def start_run(p: Path, n: int) -> subprocess.Popen[bytes]:
    """`autoresearch run` of study `p` for `n` trials, as a separate process."""
    return subprocess.Popen(
        [sys.executable, "-m", "autoresearch", "run", str(p), "--n-trials", str(n)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_held_trial(d: Path, proc: subprocess.Popen[bytes]) -> int:
    """The pid of the stand-in probe `proc` started and holds (while `d/hold` exists)."""
    deadline = time.monotonic() + 60
    while not (d / "started").exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
        assert time.monotonic() < deadline, "the held trial never started"
        time.sleep(0.05)
    time.sleep(0.1)  # the pid is written right after the file is created
    return int((d / "started").read_text())


STAND_IN = textwrap.dedent(
    """
    import json, os, pathlib, signal, sys, time
    kind, here = sys.argv[1], pathlib.Path(sys.argv[2])
    if kind == "crash":
        print("error: stand-in crashed on purpose", file=sys.stderr); sys.exit(3)
    if kind == "hang":
        time.sleep(60)
    if kind == "garbage":
        print("this is not json"); sys.exit(0)
    if kind == "oom":
        os.kill(os.getpid(), signal.SIGKILL)
    if (here / "hold").exists():
        (here / "started").write_text(str(os.getpid()))
        while (here / "hold").exists():
            time.sleep(0.05)
    m = {k: 1.0 for k in ("ttft_s prefill_tok_s decode_tok_s latency_p50_s latency_p99_s "
         "latency_max_s bytes_read_per_token cache_hit_rate prefetch_precision prefetch_recall "
         "io_stall_fraction peak_rss_bytes page_cache_bytes memory_bytes kl_mean "
         "top1_agreement tokens").split()}
    if kind == "scaled":  # figures that follow the config: ratios and fronts can move
        import tomllib
        threads = tomllib.loads(pathlib.Path(sys.argv[4]).read_text())["engine"]["io_threads"]
        m.update(decode_tok_s=10.0 * threads, memory_bytes=1e6 * threads)
    m.update(cold=True, config={}, machine={"cpu": "stand-in"}, engine_version="0",
             spread={"decode_tok_s": 0.1}, samples={"decode_tok_s": [0.9, 1.0, 1.1]})
    print("some log line")
    print(json.dumps(m))
    """
)


def write_study(
    d: Path,
    *,
    store: Path | None = None,
    model: Path | None = None,
    kind: str | None = "ok",
    space: str = "io.toml",
    extra_study: str = "",
    objectives: str = "",
    constraints: str = "",
) -> Path:
    """A study TOML in `d`; kind=None uses the real probe, else the stand-in of that kind."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "stand_in.py").write_text(STAND_IN)
    probe = ""
    if kind is not None:
        argv = ["{python}", str(d / "stand_in.py"), kind, str(d), "{store}", "{config}"]
        probe = "[probe]\nprobe_command = [" + ", ".join(f'"{a}"' for a in argv) + "]\n"
    src = f'store = "{store}"' if store is not None else f'path = "{model}"'
    text = f"""
[study]
space = "{SPACES / space}"
sampler = "random"
seed = 0
n_trials = 2
baseline_repeats = 3
trial_timeout_s = 20
{extra_study}

[model]
{src}

{probe}
{objectives}
[constraints]
memory_bytes = {{ max = 1e12 }}
{constraints}
"""
    path = d / "study.toml"
    path.write_text(text)
    return path


# ---- a study of hand-made trials (Optuna create_trial) whose user attrs look like the loop's

DISTS = {
    "cache_fraction": FloatDistribution(0.02, 0.8, log=True),
    "io_threads": IntDistribution(1, 16, log=True),
    "io_mode": CategoricalDistribution(["direct", "buffered", "mmap"]),
}
# (decode_tok_s, memory_bytes, params); trial 0 is the baseline. Front: 1 (fast), 2 (small),
# 3 (balanced). 4 is dominated, 5 breaks the memory constraint, then two failures.
TRIALS: list[tuple[float, float, dict[str, Any]]] = [
    (100.0, 200e6, {"io_mode": "buffered"}),
    (150.0, 300e6, {"cache_fraction": 0.6, "io_threads": 8, "io_mode": "buffered"}),
    (80.0, 100e6, {"cache_fraction": 0.05, "io_threads": 2, "io_mode": "direct"}),
    (130.0, 150e6, {"cache_fraction": 0.2, "io_threads": 4, "io_mode": "direct"}),
    (90.0, 250e6, {"cache_fraction": 0.4, "io_threads": 1, "io_mode": "mmap"}),
]


def _attrs(store: Path, decode: float, mem: float, cfg: EngineConfig) -> dict[str, Any]:
    metrics = {
        "decode_tok_s": decode,
        "memory_bytes": mem,
        "kl_mean": 0.0,
        "latency_p50_s": 1 / decode,
        "latency_p99_s": 1.5 / decode,
        "latency_max_s": 2 / decode,
    }
    return {
        **metrics,
        "config": cfg.to_dict(),
        "store": str(store),
        "store_fingerprint": Store.open(store).fingerprint,
        "spread": {"decode_tok_s": decode * 0.02, "memory_bytes": 1e6},
        "samples": {k: [v * 0.98, v, v * 1.02] for k, v in metrics.items()},
        "engine_version": "0.1.0",
        "machine_id": "abc",
        "cold": False,
    }


def build(
    d: Path, store: Path, n: int = len(TRIALS), failures: bool = True, kind: str = "ok"
) -> StudySpec:
    """A stored study of TRIALS[:n] (+ an infeasible and three failed trials); `kind`: the
    stand-in probe that confirm would run (`ok`: 1.0 everywhere, `scaled`: per io_threads)."""
    spec = load_study_file(write_study(d, store=store, kind=kind))
    study = open_study(spec)
    study.set_user_attr("machine", {"id": "m1", "cpu_model": "test cpu", "cpu_count": 2})
    study.set_user_attr("noise_floor", {"decode_tok_s": {"spread": 2.0, "relative": 0.02}})
    for i, (decode, mem, params) in enumerate(TRIALS[:n]):
        cfg = EngineConfig(io_mode=params["io_mode"], io_threads=params.get("io_threads", 4))
        attrs = _attrs(store, decode, mem, cfg) | ({"baseline": True} if i == 0 else {})
        study.add_trial(
            optuna.trial.create_trial(
                values=[decode, mem, 0.0],
                params=params,
                distributions={k: DISTS[k] for k in params},
                user_attrs=attrs,
                constraints={"memory_bytes": -1.0},
            )
        )
    if failures and n == len(TRIALS):
        cfg = EngineConfig()
        bad = _attrs(store, 500.0, 50e6, cfg)
        study.add_trial(
            optuna.trial.create_trial(
                values=[500.0, 50e6, 0.0],
                params=TRIALS[1][2],
                distributions=DISTS,
                user_attrs=bad,
                constraints={"memory_bytes": 3.0},  # infeasible: over the budget
            )
        )
        for reason in ("crash: probe exited 3: boom", "crash: probe killed by SIGKILL", "hang: x"):
            study.add_trial(
                optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": reason})
            )
    return spec


# ---- reading a study back -----------------------------------------------------------------


def load_study(p: Path) -> optuna.Study:
    """The study of study file `p`, through Optuna's own API (as the optuna CLI reads it)."""
    spec = load_study_file(p)
    return optuna.load_study(study_name=spec.name, storage=spec.storage)


def stored_trials(p: Path) -> list[optuna.trial.FrozenTrial]:
    # Through open_study: a worker may be creating the database's tables right now.
    return open_study(load_study_file(p), create=False).get_trials()


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The CLI's stderr, checked to be a single `error: ...` line."""
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


MAXMIN = ["maximize", "minimize"]


def space_of(*knobs: Knob) -> Space:
    return Space(path=Path("x.toml"), knobs=knobs, fixed={})


MARKUP = "crash: probe exited 1: [/bold] x [engine] y [red]z"


def fail_with_markup(spec: StudySpec) -> None:
    """A failed trial whose reason looks like rich markup (it must print literally)."""
    study = open_study(spec)
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": MARKUP})
    )
