"""Cheap first fidelity: screen cache/prefetch candidates with the engine's trace simulator.

Routing does not depend on cache or prefetch knobs, so one routing trace (recorded once, by a
real probe of the engine's default config) lets the simulator predict any such candidate's hit
rate, bytes per token and decode speed in milliseconds. Only candidates the simulator calls
promising are measured for real; the study stores only real measurements (screened-out trials
are PRUNED with their estimate attached).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoresearch.errors import AutoresearchError
from autoresearch.trial import parse_metrics
from engine.api import TraceSimulator
from engine.config import EngineConfig

# Knobs the trace stays valid for: they change where bytes come from, never which experts.
SCREENABLE = {
    "cache_bytes",
    "cache_fraction",
    "cache_policy",
    "pinned_fraction",
    "prefetch",
    "prefetch_depth",
    "prefetch_width",
}


class ScreenError(AutoresearchError):
    """The screening trace could not be recorded."""


@dataclass
class Screener:
    simulator: TraceSimulator
    keep: float  # measure a candidate whose estimate is >= keep x the best estimate so far
    measured: list[tuple[float, int]] = field(default_factory=list)  # (estimate, cache_bytes)

    @classmethod
    def record(cls, store: Path, work_dir: Path, keep: float, timeout_s: float) -> Screener:
        """Probe the engine's default config once with --trace; derive rates from it."""
        trace_path = work_dir / f"screen-{store.name}.trace.npz"
        with tempfile.TemporaryDirectory(prefix="autoresearch-screen-") as tmp:
            cfg = Path(tmp) / "config.toml"
            EngineConfig(cache_bytes=0).to_toml(cfg)  # all-miss: isolates compute from reads
            argv = [
                sys.executable,
                "-m",
                "engine",
                "probe",
                str(store),
                "--config",
                str(cfg),
                "--trace",
                str(trace_path),
                "--no-quality",
                "--json",
            ]
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise ScreenError(
                    f"screening trace of {store}: no result in {timeout_s:g} s"
                ) from None
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
            raise ScreenError(f"screening trace of {store} failed: {tail[0]}")
        metrics, error = parse_metrics(proc.stdout, ["decode_tok_s", "io_stall_fraction"])
        if error is not None:
            raise ScreenError(f"screening trace of {store}: {error}")
        per_token = 1.0 / max(float(metrics["decode_tok_s"]), 1e-9)
        stall = float(metrics["io_stall_fraction"])
        demand = float(metrics.get("bytes_requested_per_token", 0.0))
        # All-miss run: the stalled share of a token is its reads, the rest is compute.
        read_s = per_token * stall
        simulator = TraceSimulator.load(
            trace_path,
            compute_s_per_token=per_token * (1 - stall),
            disk_bytes_per_s=demand / read_s if read_s > 0 and demand > 0 else 1e9,
        )
        return cls(simulator, keep)

    def estimate(self, config: EngineConfig) -> dict[str, Any]:
        return self.simulator.estimate(config)

    def decide(self, config: EngineConfig) -> tuple[bool, dict[str, Any]]:
        """(measure it?, the estimate). Promising = fast enough, or smaller than anything yet."""
        est = self.estimate(config)
        speed = float(est.get("decode_tok_s_estimate", 0.0))
        best = max((s for s, _ in self.measured), default=0.0)
        smallest = min((c for _, c in self.measured), default=None)
        keep = speed >= self.keep * best or smallest is None or config.cache_bytes < smallest
        if keep:
            self.measured.append((speed, config.cache_bytes))
        return keep, est


def unscreenable(knobs: list[str]) -> list[str]:
    """Searched knobs the simulator cannot stand for (routing, store or I/O timing changes)."""
    return sorted(k for k in knobs if k not in SCREENABLE)
