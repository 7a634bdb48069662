"""Shared fixtures: tiny synthetic checkpoints per family and packed stores, built once per
session and cached, so every test that needs one pays for it at most once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.store import Store


@pytest.fixture(scope="session", autouse=True)
def compiled_kernels() -> None:
    """Compile the CPU kernels once (numba caches them on disk) before any test starts a child
    process: a trial child would otherwise spend its timeout compiling them."""
    from engine import kernels

    kernels.warm_up()


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Studies build models/stores and take the probe lock in a cache dir: keep the tests' out
    of the user's ~/.cache (children inherit the variable)."""
    os.environ.setdefault("AUTORESEARCH_CACHE_DIR", str(tmp_path_factory.mktemp("ar-cache")))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_checkpoint(family) -> HF-layout checkpoint dir (synth `tiny` preset, seed 0).

    Treat it as read-only; copy it (shutil.copytree) before changing anything.
    """
    from engine.synth.hf import synthesize

    root = tmp_path_factory.mktemp("checkpoints")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = synthesize(root / family, family=family, preset="tiny", seed=0)
        return cache[family]

    return get


@pytest.fixture(scope="session")
def mlx_quantized_checkpoint(
    tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """mlx_quantized_checkpoint(family, quantize=True) -> what the real `mlx_lm convert -q`
    writes (4-bit, group 64) from the tiny checkpoint: stacked switch_mlp experts,
    `quantization` in config. quantize=False: plain `mlx_lm convert` (stacked, unquantized)."""
    root = tmp_path_factory.mktemp("mlx_q")
    cache: dict[tuple[str, bool], Path] = {}

    def get(family: str, quantize: bool = True) -> Path:
        if (family, quantize) not in cache:
            out = root / f"{family}-{'q' if quantize else 'fp'}"
            cmd = [
                sys.executable,
                "-m",
                "mlx_lm",
                "convert",
                "--hf-path",
                str(tiny_checkpoint(family)),
                "--mlx-path",
                str(out),
            ]
            env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # a local dir must never need the network
            subprocess.run(
                cmd + ["-q"] * quantize, check=True, capture_output=True, env=env, timeout=300
            )
            cache[family, quantize] = out
        return cache[family, quantize]

    return get


@pytest.fixture(scope="session")
def packed_store(
    tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Store]:
    """packed_store(family, bits=16, group_size=64, layout="natural") -> Store, packed once.

    Read-only: copy the store dir before corrupting it.
    """
    from engine.pack import pack

    root = tmp_path_factory.mktemp("stores")
    cache: dict[tuple[str, int, int, str], Store] = {}

    def get(family: str, bits: int = 16, group_size: int = 64, layout: str = "natural") -> Store:
        key = (family, bits, group_size, layout)
        if key not in cache:
            out = root / f"{family}-{bits}b-g{group_size}-{layout}"
            cache[key] = pack(
                tiny_checkpoint(family),
                out,
                bits=bits,
                group_size=group_size,
                layout=layout,
                progress=False,
            )
        return cache[key]

    return get
