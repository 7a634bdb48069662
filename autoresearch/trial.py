"""One measurement: `python -m engine probe` in a child process, with a timeout.

The child gets its own process group so a hang is killed with everything it spawned, and so a
terminal Ctrl-C reaches only us (we decide what happens to the child). Whatever goes wrong --
non-zero exit, a signal (OOM killer), a hang, output that is not the metrics JSON -- comes back
as a `ProbeResult` with `error` set, never as an exception: one bad trial must not end a study.

The probe runs under the machine's probe lock (autoresearch/hostlock.py), and on Linux it is
tied to us with PR_SET_PDEATHSIG: a worker killed -9 takes its probe with it instead of leaving
an orphan that skews the next measurement on this machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autoresearch.hostlock import probe_lock
from engine.config import EngineConfig

# Run as `python -c GUARD PARENT_PID ARGV...`: set PR_SET_PDEATHSIG (prctl via ctypes: the
# stdlib has no binding), make sure the parent did not die before that, then exec the probe.
GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): os._exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@dataclass
class ProbeResult:
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_s: float = 0.0
    probe_start: str | None = None  # UTC ISO times the probe held the machine's probe lock
    probe_end: str | None = None
    skipped: str | None = None  # why the probe was not run (recheck said so under the lock)


def probe_argv(
    template: tuple[str, ...] | None,
    *,
    store: Path,
    config: Path,
    suite: Path | None,
    repeats: int,
    cold: bool,
) -> list[str]:
    """The child's argv: the real probe, or a study's (test-only) template filled in."""
    mode = "--cold" if cold else "--warm"
    if template is None:
        argv = [sys.executable, "-m", "engine", "probe", str(store), "--config", str(config)]
        if suite is not None:
            argv += ["--suite", str(suite)]
        return [*argv, mode, "--repeats", str(repeats), "--json"]
    fill = {
        "python": sys.executable,
        "store": str(store),
        "config": str(config),
        "repeats": str(repeats),
        "mode": mode,
        "suite": str(suite or ""),
    }
    return [part.format(**fill) for part in template]


def run_probe(
    config: EngineConfig,
    *,
    store: Path,
    suite: Path | None,
    repeats: int,
    cold: bool,
    timeout_s: float,
    required: list[str],
    template: tuple[str, ...] | None = None,
    on_start: Any = None,
    lock_dir: Path | None = None,
    recheck: Callable[[], str | None] | None = None,
) -> ProbeResult:
    """Run one probe; `required` metrics must be finite numbers. on_start(pid) is told the pid.

    lock_dir: the cache dir whose probe lock serializes probes on this machine (None: no lock).
    recheck(): asked once the lock is held; a reason string skips the probe (e.g. another
    worker measured the same config while we waited).
    """
    with tempfile.TemporaryDirectory(prefix="autoresearch-trial-") as tmp:
        cfg = Path(tmp) / "config.toml"
        config.to_toml(cfg)
        argv = probe_argv(
            template, store=store, config=cfg, suite=suite, repeats=repeats, cold=cold
        )
        with contextlib.ExitStack() as held:
            fds = (held.enter_context(probe_lock(lock_dir)),) if lock_dir is not None else ()
            why = recheck() if recheck is not None else None
            if why is not None:
                return ProbeResult(skipped=why)
            result = _run_child(argv, timeout_s, required, on_start, fds)
    return result


def _run_child(
    argv: list[str], timeout_s: float, required: list[str], on_start: Any, fds: tuple[int, ...]
) -> ProbeResult:
    start = _utc_now()
    if sys.platform == "linux":
        argv = [sys.executable, "-c", GUARD, str(os.getpid()), *argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        pass_fds=fds,  # the child holds the probe lock too: see autoresearch/hostlock.py
    )
    res = _wait_child(proc, timeout_s, required, on_start, t0)
    res.probe_start, res.probe_end = start, _utc_now()
    return res


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _wait_child(
    proc: subprocess.Popen[str], timeout_s: float, required: list[str], on_start: Any, t0: float
) -> ProbeResult:
    try:
        if on_start is not None:
            on_start(proc.pid)  # a study write: a Ctrl-C here must still kill the child
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.communicate()
        return ProbeResult(
            error=f"hang: no result after {timeout_s:g} s (trial_timeout_s); killed",
            wall_s=time.monotonic() - t0,
        )
    except BaseException:
        # Ctrl-C or anything else: never leave an orphan probe reading the disk.
        kill_group(proc.pid)
        proc.communicate()
        raise
    wall = time.monotonic() - t0
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if sig == "SIGKILL" else ""
        return ProbeResult(error=f"crash: probe killed by {sig}{hint}", wall_s=wall)
    if proc.returncode != 0:
        return ProbeResult(
            error=f"crash: probe exited {proc.returncode}: {_last_line(err) or '(no stderr)'}",
            wall_s=wall,
        )
    metrics, error = parse_metrics(out, required)
    return ProbeResult(metrics=metrics, error=error, wall_s=wall)


def parse_metrics(stdout: str, required: list[str]) -> tuple[dict[str, Any], str | None]:
    """The last stdout line as the metrics object; the error names what is wrong with it."""
    line = _last_line(stdout)
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return {}, f"garbage: last stdout line is not JSON: {line[:120]!r}"
    if not isinstance(data, dict):
        return {}, f"garbage: last stdout line is JSON but not an object: {line[:120]!r}"
    for m in required:
        v = data.get(m)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return data, f"garbage: metric {m!r} is missing or not a finite number ({v!r})"
    return data, None


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""
