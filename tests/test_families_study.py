"""The seed model's architecture end to end: a short study on a synthesized tiny qwen3_5_moe
(studies/qwen3_5_moe_tiny.toml, two trials) exports a config that `engine run` accepts."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from autoresearch.cli import main
from autoresearch.study_file import load_study_file
from engine.cli import main as engine_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_qwen3_5_moe_study_exports_a_config_engine_run_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "studies" / "qwen3_5_moe_tiny.toml").read_text()
    text = text.replace("../search_spaces/", f"{ROOT / 'search_spaces'}/")
    text = text.replace("baseline_repeats = 2", "baseline_repeats = 1")
    study = tmp_path / "q35.toml"
    study.write_text(text)
    assert main(["run", str(study), "--n-trials", "2"]) == 0
    tuned = tmp_path / "tuned.toml"
    assert main(["export", str(study), "--pick", "fastest", "-o", str(tuned)]) == 0
    cfg = tomllib.loads(tuned.read_text())
    assert cfg["provenance"]["study"] == "q35"
    bits = cfg["engine"].get("quant_bits") or 16
    stores = load_study_file(study).cache_dir / "stores"  # built per machine in the cache dir
    store = next(stores.glob(f"qwen3_5_moe-tiny-s0-b{bits}-*"))
    capsys.readouterr()
    rc = engine_main(["run", str(store), "--config", str(tuned), "--prompt-ids", "5,9,17",
                      "--max-tokens", "4"])  # fmt: skip
    assert rc == 0
    assert len(capsys.readouterr().out.splitlines()[0].split()) == 4  # four generated tokens
