"""engine/contract.py: light to import, and the one definition the engine and the search use."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib

import pytest

from engine import contract
from engine.config import EngineConfig
from engine.errors import ConfigError

# Poisoned entries make any import of them fail: the contract (and the autoresearch modules
# that read study files) must load without a compute stack.
HEAVY = ("mlx", "mlx_lm", "numpy", "numba", "optuna")
POISON = f"import sys\nfor m in {HEAVY!r}:\n    sys.modules[m] = None\n"


@pytest.mark.parametrize("module", ["engine.contract", "engine.config", "engine.api"])
def test_imports_without_mlx_or_numpy(module: str) -> None:
    code = POISON + f"import {module}\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_study_files_load_without_mlx() -> None:
    """Reading a study file checks families and presets against the contract, not synth's
    modules: no MLX is loaded (optuna and numpy are, for the search space)."""
    code = "import sys\nfor m in ('mlx', 'mlx_lm', 'numba'):\n    sys.modules[m] = None\n"
    code += "import autoresearch.study_file, autoresearch.cli\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_poisoning_does_catch_a_heavy_import() -> None:
    """The check above can fail: a module importing MLX dies under the same poison."""
    proc = subprocess.run(
        [sys.executable, "-c", POISON + "import engine.families\n"], capture_output=True
    )
    assert proc.returncode != 0


def test_knobs_are_the_engine_config_fields() -> None:
    assert list(contract.KNOBS) == [f.name for f in dataclasses.fields(EngineConfig)]


def test_engine_config_validates_with_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrowing a knob's range in the contract narrows what EngineConfig accepts."""
    EngineConfig(io_threads=8)
    narrow = dataclasses.replace(contract.KNOBS["io_threads"], maximum=4)
    monkeypatch.setitem(contract.KNOBS, "io_threads", narrow)
    with pytest.raises(ConfigError, match=r"io_threads must be >= 1 and <= 4, got 8"):
        EngineConfig(io_threads=8)


@pytest.mark.parametrize(
    ("knob", "bad", "message"),
    [
        ("cache_bytes", -1, "cache_bytes must be >= 0, got -1"),
        ("io_threads", True, "io_threads must be an integer, got True"),
        ("read_chunk_bytes", 5000, "read_chunk_bytes must be a multiple of 4096"),
        ("pinned_fraction", 1.5, r"pinned_fraction must be a number in \[0, 1\], got 1.5"),
        ("pinned_fraction", "half", r"pinned_fraction must be a number in \[0, 1\]"),
        ("pinned_fraction", float("nan"), r"pinned_fraction must be a number in \[0, 1\]"),
        ("expert_memory_fraction", float("inf"), r"expert_memory_fraction must be a number"),
        ("expert_memory_fraction", 0, r"expert_memory_fraction must be a number in \(0, 1\]"),
        ("quant_bits", 16.0, "quant_bits must be one of 16, 8, 4, 3, 2, got 16.0"),
        ("layout", "sorted", "layout must be one of 'natural', 'coactivation', got 'sorted'"),
        ("cache_policy", None, "cache_policy must be one of"),
    ],
)
def test_knob_check_refuses_by_name(knob: str, bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        contract.KNOBS[knob].check(bad)
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**{knob: bad})


@pytest.mark.parametrize(
    ("knob", "good"),
    [
        ("pinned_fraction", 0),
        ("pinned_fraction", 1.0),
        ("expert_memory_fraction", 1),
        ("quant_bits", None),
        ("read_chunk_bytes", 8192),
        ("io_threads", 256),
    ],
)
def test_knob_check_accepts_the_bounds(knob: str, good: object) -> None:
    contract.KNOBS[knob].check(good)


def test_every_default_passes_its_own_knob() -> None:
    for name, value in dataclasses.asdict(EngineConfig()).items():
        contract.KNOBS[name].check(value)


def test_metrics_have_a_direction_except_counts() -> None:
    assert set(contract.METRICS) >= {"decode_tok_s", "memory_bytes", "kl_mean", "tokens"}
    assert contract.METRICS["decode_tok_s"].direction == "maximize"
    assert contract.METRICS["memory_bytes"].direction == "minimize"
    assert contract.METRICS["tokens"].direction is None
    assert all(m.direction in (*contract.DIRECTIONS, None) for m in contract.METRICS.values())


def test_probe_reports_every_figure_of_merit() -> None:
    from engine.measure.probe import METRICS as PROBE

    merit = [n for n, m in contract.METRICS.items() if m.direction is not None]
    assert list(PROBE) == merit == list(contract.FIGURES)
    assert "tokens" not in merit


def test_families_are_the_tiny_configs_engine_synth_builds() -> None:
    from engine.synth import hf as synth
    from engine.synth import tiny as synth_generic

    doc = tomllib.loads(contract.TINY_FAMILIES_FILE.read_text())
    assert tuple(doc["families"]) == contract.SYNTH_FAMILIES
    assert synth_generic.SYNTH_FAMILIES is contract.SYNTH_FAMILIES
    assert set(contract.HF_SYNTH_FAMILIES) <= set(contract.SYNTH_FAMILIES)
    assert synth.SYNTH_FAMILIES is contract.HF_SYNTH_FAMILIES


def test_presets_are_the_ones_synth_has_data_for() -> None:
    from engine.synth import presets as synth_presets

    assert tuple(synth_presets.PRESETS) == contract.TOY_PRESETS
    assert tuple(synth_presets.REAL_PRESETS) == contract.REAL_PRESETS
    assert synth_presets.ALL_PRESETS == contract.SYNTH_PRESETS
