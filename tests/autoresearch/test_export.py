"""`autoresearch export`: picks, limits, provenance, the store check, the balanced pick."""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
from ar_helpers import build

from autoresearch.cli import main
from autoresearch.export import KL_MEANINGFUL, Limits, NoTrialFits, balanced, export
from autoresearch.results import Figures, load_results
from autoresearch.study_file import StudySpec
from engine.config import EngineConfig


def _fig(n: int, decode: float, mem: float, kl: float) -> Figures:
    t = optuna.trial.create_trial(values=[decode, mem, kl])
    t.number = n
    medians = {"decode_tok_s": decode, "memory_bytes": mem, "kl_mean": kl}
    return Figures(trial=t, medians=medians, spread={}, samples={})


@pytest.mark.parametrize(
    ("pick", "limits", "want"),
    [
        ("fastest", Limits(), 1),
        ("smallest", Limits(), 2),
        ("balanced", Limits(), 3),
        ("fastest", Limits(max_memory=200e6), 3),
        ("fastest", Limits(max_memory=200e6, max_kl=0.0), 3),
    ],
)
def test_export_pick_satisfies_limits(
    spec: StudySpec, tmp_path: Path, pick: str, limits: Limits, want: int
) -> None:
    out = tmp_path / "tuned.toml"
    f = export(load_results(spec), out, pick=pick, limits=limits)
    assert f.number == want
    doc = tomllib.loads(out.read_text())
    prov = doc["provenance"]
    assert (
        prov["trial"] == want
        and prov["store_fingerprint"] == f.trial.user_attrs["store_fingerprint"]
    )
    assert prov["measurement"] == "unconfirmed: single measurement"
    mem = prov["metrics"]["memory_bytes"]
    assert mem["median"] <= (limits.max_memory or float("inf"))
    assert mem["ratio_to_baseline"] == pytest.approx(mem["median"] / 200e6)
    assert EngineConfig.from_toml(out).to_dict() == f.trial.user_attrs["config"]


def test_export_fails_when_no_trial_fits(spec: StudySpec, tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(
        NoTrialFits, match=r"no trial satisfies --max-memory 5e\+07.*closest is trial 2"
    ):
        export(load_results(spec), tmp_path / "t.toml", limits=Limits(max_memory=50e6))
    argv = [
        "export",
        str(spec.path),
        "--pick",
        "fastest",
        "--max-memory",
        "5e7",
        "-o",
        str(tmp_path / "t.toml"),
    ]
    assert main(argv) == 1
    assert "no trial satisfies --max-memory" in capsys.readouterr().err
    assert not (tmp_path / "t.toml").exists()
    with pytest.raises(NoTrialFits, match=r"trial 1 does not satisfy --max-memory 1e\+08"):
        export(load_results(spec), tmp_path / "t.toml", trial=1, limits=Limits(max_memory=1e8))


def test_export_json_is_the_same_content(spec: StudySpec, tmp_path: Path) -> None:
    base = ["export", str(spec.path), "--pick", "balanced"]
    assert main([*base, "-o", str(tmp_path / "t.toml")]) == 0
    assert main([*base, "--format", "json", "-o", str(tmp_path / "t.json")]) == 0
    a = tomllib.loads((tmp_path / "t.toml").read_text())
    b = json.loads((tmp_path / "t.json").read_text())
    for doc in (a, b):
        doc["provenance"].pop("exported")
    assert a == b


def test_export_for_another_model_refuses_without_force(
    spec: StudySpec, tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    other = tmp_path / "other-store"
    shutil.copytree(tiny[1], other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["source"]["fingerprint"] = "f" * 64  # a store packed from a different model
    (other / "manifest.json").write_text(json.dumps(manifest))
    res = load_results(spec)
    # The error names the store the trial expects, not only fingerprints.
    with pytest.raises(Exception, match=rf"tuned on store {tiny[1]} \(model .*pass --force"):
        export(res, tmp_path / "t.toml", store=str(other))
    export(res, tmp_path / "t.toml", store=str(other), force=True)  # warns, writes
    assert (tmp_path / "t.toml").is_file()


@pytest.mark.parametrize("bad", ["nan", "inf", "-1"])
def test_export_refuses_a_limit_that_is_not_a_finite_number(
    spec: StudySpec, tmp_path: Path, capsys: Any, bad: str
) -> None:
    out = tmp_path / "t.toml"
    assert main(["export", str(spec.path), "--max-kl", bad, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "--max-kl must be a finite number >= 0" in err and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(Exception, match="--max-memory must be a finite"):
        Limits(max_memory=math.nan)


def test_export_prints_store_trial_baseline_and_a_command(
    spec: StudySpec, tmp_path: Path, capsys: Any, tiny: tuple[Path, Path]
) -> None:
    out = tmp_path / "t.toml"
    assert main(["export", str(spec.path), "--pick", "fastest", "-o", str(out)]) == 0
    o = capsys.readouterr()
    assert f"store: {tiny[1]}" in o.out and "trial: 1 (fastest)" in o.out
    assert "baseline: no" in o.out and "warning" not in o.err
    assert f"run it: python -m engine run {tiny[1]} --config {out} --prompt 'Hello'" in o.out
    assert "memory_bytes: 286.1 MiB ± 976.6 KiB (x1.5 baseline)" in o.out


def test_export_warns_when_the_pick_is_the_baseline(
    tmp_path: Path, tiny: tuple[Path, Path], capsys: Any
) -> None:
    spec = build(tmp_path, tiny[1], n=1)  # only the baseline has run
    assert main(["export", str(spec.path), "--pick", "fastest", "-o", str(tmp_path / "t")]) == 0
    o = capsys.readouterr()
    assert "baseline: yes" in o.out
    assert "warning: trial 0 is the baseline" in o.err and "untuned default" in o.err


def test_balanced_ignores_a_kl_gap_below_the_meaningful_size() -> None:
    objs = [("decode_tok_s", "maximize"), ("memory_bytes", "minimize"), ("kl_mean", "minimize")]
    # Trial 2 beats trial 1 on speed and memory; 1 is "better" only by a 0.001 kl gap.
    figs = [
        _fig(1, 100.0, 300e6, 0.0006),
        _fig(2, 105.0, 280e6, 0.0016),
        _fig(3, 60.0, 100e6, 0.0030),
        _fig(4, 140.0, 600e6, 0.0020),
    ]
    assert balanced(figs, objs).number == 1  # kl weighed like the rest: the pick
    assert balanced(figs, objs, {"kl_mean": KL_MEANINGFUL}).number == 2
    # Speed within its spread counts as a tie too: 2 is not faster than 1 by more than noise.
    tol = {"kl_mean": KL_MEANINGFUL, "decode_tok_s": 10.0, "memory_bytes": 30e6}
    assert balanced(figs, objs, tol).number in (2, 3)


def test_export_balanced_uses_the_noise_floor(spec: StudySpec, tmp_path: Path) -> None:
    res = load_results(spec)
    f = export(res, tmp_path / "t.toml", pick="balanced")
    assert f.number == 3
