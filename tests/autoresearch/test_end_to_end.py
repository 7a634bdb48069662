"""Real probes from study file to exported config that the engine runs."""

from __future__ import annotations

import json
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from ar_helpers import REPO, load_study, write_study
from optuna.trial import TrialState
from rich.console import Console

from autoresearch.cli import main
from autoresearch.demo_finish import finish_demo
from autoresearch.study_file import load_study_file
from engine.cli import main as engine_main
from engine.config import EngineConfig, load_provenance


@pytest.fixture(scope="module")
def real_study(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]) -> Path:
    d = tmp_path_factory.mktemp("real")
    p = write_study(d, store=tiny[1], kind=None, extra_study="cold = false")
    text = p.read_text().replace("baseline_repeats = 3", "baseline_repeats = 2")
    # Real probes: a shared, loaded machine can take several times their usual few seconds.
    p.write_text(text.replace("trial_timeout_s = 20", "trial_timeout_s = 120"))
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    return p


@pytest.mark.slow
def test_real_probe_end_to_end(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """Real `python -m engine probe` trials on tiny store variants packed on demand."""
    p = write_study(
        tmp_path,
        model=tiny[0],
        kind=None,
        space="quality.toml",
        extra_study="cold = false",
        constraints="kl_mean = { max = 10.0 }",
    )
    text = p.read_text().replace("baseline_repeats = 3", "baseline_repeats = 2")
    p.write_text(text.replace("trial_timeout_s = 20", "trial_timeout_s = 120"))
    assert main(["run", str(p), "--n-trials", "3"]) == 0
    study = load_study(p)
    assert study.trials[0].user_attrs["baseline"] is True
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done, [t.user_attrs.get("fail_reason") for t in study.trials]
    for t in done:
        assert t.user_attrs["decode_tok_s"] > 0 and "machine_id" in t.user_attrs
        assert all(v > 0 for v in t.user_attrs["ttft_by_prompt_tokens"].values())
    assert "noise_floor" in study.user_attrs and "machine" in study.user_attrs
    # Variants are built in this machine's cache dir (tests: conftest's), not by the study.
    assert (load_study_file(p).cache_dir / "stores").is_dir()
    assert not (tmp_path / "stores").exists()


def test_confirm_real_front(real_study: Path, capsys: Any) -> None:
    before = {t.number: dict(t.user_attrs) for t in load_study(real_study).trials}
    assert main(["confirm", str(real_study), "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "confirmed trial 0:" in out
    study = load_study(real_study)
    recs = {k: v for k, v in study.user_attrs.items() if k.startswith("confirmed_trial_")}
    assert len(recs) >= 2, out  # the baseline and at least one front trial
    for key, rec in recs.items():
        n = int(key.rsplit("_", 1)[1])
        assert rec["failures"] == []
        assert all(len(v) >= 1 for v in rec["samples"].values())
        # Timing medians are re-measured (a fresh process never lands on the same float).
        assert rec["metrics"]["decode_tok_s"] != rec["before"]["decode_tok_s"]
        assert study.trials[n].user_attrs == before[n]  # the loop's record is untouched


def test_export_then_engine_probe_runs_that_config(
    real_study: Path, tmp_path: Path, capsys: Any
) -> None:
    tuned = tmp_path / "tuned.toml"
    assert main(["export", str(real_study), "--pick", "balanced", "-o", str(tuned)]) == 0
    prov = tomllib.loads(tuned.read_text())["provenance"]
    trial = load_study(real_study).trials[prov["trial"]]
    assert EngineConfig.from_toml(tuned).to_dict() == trial.user_attrs["config"]
    capsys.readouterr()
    store = prov["store"]
    argv = ["probe", store, "--config", str(tuned), "--no-quality", "--json", "--warm"]
    assert engine_main(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["config"] == trial.user_attrs["config"]  # exactly the exported config
    assert metrics["store_fingerprint"] == prov["store_fingerprint"]


def test_finish_demo_writes_tuned_and_report(real_study: Path, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    paths = finish_demo(real_study, tmp_path / "out", console=console)
    assert paths["tuned"].is_file() and paths["report"].is_file()
    EngineConfig.from_toml(paths["tuned"])  # engine reads it
    parser = HTMLParser()
    parser.feed(paths["report"].read_text())
    parser.close()
    text = console.export_text()
    assert "Pareto front" in text and str(paths["report"]) in text


def test_demo_command_runs_a_study_and_writes_its_outputs(
    tmp_path: Path,
    tiny: tuple[Path, Path],
    capsys: pytest.CaptureFixture,
) -> None:
    study = write_study(tmp_path / "s", store=tiny[1], kind=None)
    out = tmp_path / "out"
    assert main(["demo", str(study), "--out", str(out), "--n-trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert "tuned:" in printed and "report:" in printed
    tuned = out / "tuned.toml"
    EngineConfig.from_toml(tuned)  # the engine accepts it as is
    assert load_provenance(tuned)["provenance"]["study"] == "study"
    assert (out / "report.html").read_text().lstrip().lower().startswith("<!doctype html")


def test_qwen3_5_moe_study_exports_a_config_engine_run_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (REPO / "studies" / "qwen3_5_moe_tiny.toml").read_text()
    text = text.replace("../search_spaces/", f"{REPO / 'search_spaces'}/")
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
    rc = engine_main(
        ["run", str(store), "--config", str(tuned), "--prompt-ids", "5,9,17", "--max-tokens", "4"]
    )
    assert rc == 0
    assert len(capsys.readouterr().out.splitlines()[0].split()) == 4  # four generated tokens
