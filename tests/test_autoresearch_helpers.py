"""Shared helpers for the autoresearch tests: a tiny real store and stand-in probe children.

The stand-ins exist only for paths the real probe cannot be made to take on demand (crash,
hang, garbage, being killed mid-trial); their numbers are placeholders, never results.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_model_and_store(tmp_path_factory.mktemp("tiny"))
