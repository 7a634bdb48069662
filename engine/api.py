"""The engine's public API for code outside engine/: what autoresearch (or a script) may call.

Outside engine/, import only engine.contract (knobs, metrics, families, presets),
engine.config (EngineConfig), engine.errors and this module. Each function here imports its
implementation when called, so importing this module loads no MLX or numpy, and this file is
the one place outside the engine's own modules that knows where they live: moving one means
editing an import here, never a caller.

    read_toml(path, what, error)           a project TOML input, one error style
    add_command(sub, name, fn), dispatch   CLI plumbing both CLIs share (docstring = --help)
    store_info(path) -> StoreInfo          what a caller needs to know of a packed store
    pack_store(checkpoint, out, ...)       pack a checkpoint into a store variant
    synthesize_model(out, family, ...)     write a synthetic checkpoint (`engine synth`)
    default_suite_path(store)              the probe suite a store is measured with by default
    machine_id(disk)                       this machine's fingerprint id (no disk measurement)
    TraceSimulator                         estimate cache/prefetch configs from a routing trace
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import EngineConfig

# A CLI command handler: parsed arguments in, exit status out.
Handler = Callable[[argparse.Namespace], int]


# ---- files and command lines -----------------------------------------------------------------


def read_toml(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """Parse a TOML input; missing, unreadable, non-UTF-8 or invalid raises `error` naming the
    file and `what` it is (a FIFO or a runaway file is refused before reading)."""
    from engine.tomlfile import read_toml as read

    return read(path, what, error)


def add_command(sub: Any, name: str, fn: Handler) -> argparse.ArgumentParser:
    """A subcommand of `sub` (argparse subparsers) whose help is the handler's docstring."""
    from engine.cli.util import add_command as add

    return add(sub, name, fn)


def dispatch(args: argparse.Namespace, errors: tuple[type[BaseException], ...]) -> int:
    """Run args.func; an error of `errors` prints one line (exit 1), Ctrl-C exits 130."""
    from engine.cli.util import dispatch as run

    return run(args, errors)


# ---- models and stores -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoreInfo:
    """A packed store as a caller sees it (engine.store.Store holds much more)."""

    path: Path
    fingerprint: str  # of the store: changes when it is re-packed
    model_fingerprint: str | None  # of the checkpoint it was packed from
    expert_bytes: int  # all experts of all layers
    bits: int
    group_size: int | None
    layout: str
    top_k: int  # the model's routed experts per token
    has_tokenizer: bool  # `engine run --prompt TEXT` works on it


def store_info(path: Path) -> StoreInfo:
    """Open the store at `path` (raises EngineError subclasses or OSError, like Store.open)."""
    from engine.cli.run import has_tokenizer
    from engine.store import Store

    store = Store.open(Path(path))
    return StoreInfo(
        path=Path(path),
        fingerprint=store.fingerprint,
        model_fingerprint=store.manifest.get("source", {}).get("fingerprint"),
        expert_bytes=len(store.layers) * store.num_experts * store.expert_nbytes,
        bits=store.bits,
        group_size=store.group_size,
        layout=store.layout,
        top_k=store.top_k,
        has_tokenizer=has_tokenizer(store),
    )


def pack_store(
    checkpoint: Path,
    out: Path,
    *,
    bits: int,
    group_size: int,
    layout: str,
    progress: bool = False,
) -> Path:
    """Pack `checkpoint` into a store at `out` (atomic: temp dir + rename; StoreExists if
    another process finished it first)."""
    from engine.pack import pack

    pack(checkpoint, out, bits=bits, group_size=group_size, layout=layout, progress=progress)
    return out


def synthesize_model(
    out: Path, *, family: str, preset: str = "tiny", seed: int = 0, progress: bool | None = None
) -> Path:
    """Write a synthetic checkpoint like `engine synth` (families and presets: the contract's);
    atomic, StoreExists if another process finished it first."""
    from engine.synth.tiny import synthesize_family

    return synthesize_family(out, family=family, preset=preset, seed=seed, progress=progress)


def default_suite_path(store: Path | None = None) -> Path:
    """The store's own probe suite if it has one, else the engine's shipped default."""
    from engine.suite import default_suite_path as default

    return default(store)


def machine_id(disk: Path | None = None) -> str:
    """This machine's fingerprint id, with the disk holding `disk`; instant and stable."""
    from engine.measure.machine import fingerprint

    return str(fingerprint(disk_path=disk, measure_disk=False)["id"])


def compile_kernels(timeout_s: float = 900) -> bool:
    """Compile the CPU kernels into numba's on-disk cache, in a child process, so every probe
    after it loads them instead of compiling: a process that compiles holds ~160 MB more RSS,
    which a relative memory budget (resolved from the process's own RSS) would hand to the
    first trial only. False if the child failed (probes then compile, as before)."""
    import subprocess
    import sys

    argv = [sys.executable, "-c", "from engine.kernels import warm_up; warm_up()"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# ---- trace simulation ------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceSimulator:
    """A routing trace (`engine probe --trace`) and this machine's rates: estimates any
    config that changes only cache and prefetch knobs, in milliseconds."""

    trace: Any  # engine.measure.trace.Trace
    compute_s_per_token: float  # decode time per token with every expert in RAM
    disk_bytes_per_s: float  # read bandwidth at the config's read size

    @classmethod
    def load(
        cls, path: Path, *, compute_s_per_token: float, disk_bytes_per_s: float
    ) -> TraceSimulator:
        from engine.measure.trace import Trace

        return cls(Trace.load(path), compute_s_per_token, disk_bytes_per_s)

    def estimate(self, config: EngineConfig) -> dict[str, Any]:
        """The simulator's figures (`decode_tok_s_estimate`, hit rate, bytes per token...)."""
        from engine.measure.simulate import Rates, simulate

        rates = Rates(self.compute_s_per_token, self.disk_bytes_per_s)
        return simulate(self.trace, config, rates=rates)
