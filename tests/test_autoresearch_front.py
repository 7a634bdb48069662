"""show / export / report / dashboard / confirm on a study of hand-made trials (Optuna's
create_trial + add_trial) whose user attrs look like the loop's; plus a stand-in confirm."""

from __future__ import annotations

import json
import shutil
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from rich.console import Console
from test_autoresearch_helpers import tiny, write_study

from autoresearch.cli import main
from autoresearch.confirm import confirm_study
from autoresearch.dashboard import HOST, dashboard_argv
from autoresearch.export import Limits, NoTrialFits, export
from autoresearch.report import write_report
from autoresearch.results import load_results
from autoresearch.show import show
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec, load_study_file
from engine.config import EngineConfig
from engine.store import Store

__all__ = ["tiny"]

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
    metrics = {"decode_tok_s": decode, "memory_bytes": mem, "kl_mean": 0.0,
               "latency_p50_s": 1 / decode, "latency_p99_s": 1.5 / decode,
               "latency_max_s": 2 / decode}  # fmt: skip
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


def build(d: Path, store: Path, n: int = len(TRIALS), failures: bool = True) -> StudySpec:
    spec = load_study_file(write_study(d, store=store, kind="ok"))
    study = open_study(spec)
    study.set_user_attr("machine", {"id": "m1", "cpu_model": "test cpu", "cpu_count": 2})
    study.set_user_attr("noise_floor", {"decode_tok_s": {"spread": 2.0, "relative": 0.02}})
    for i, (decode, mem, params) in enumerate(TRIALS[:n]):
        cfg = EngineConfig(io_mode=params["io_mode"], io_threads=params.get("io_threads", 4))
        attrs = _attrs(store, decode, mem, cfg) | ({"baseline": True} if i == 0 else {})
        study.add_trial(optuna.trial.create_trial(
            values=[decode, mem, 0.0], params=params,
            distributions={k: DISTS[k] for k in params}, user_attrs=attrs,
            constraints={"memory_bytes": -1.0},
        ))  # fmt: skip
    if failures and n == len(TRIALS):
        cfg = EngineConfig()
        bad = _attrs(store, 500.0, 50e6, cfg)
        study.add_trial(optuna.trial.create_trial(
            values=[500.0, 50e6, 0.0], params=TRIALS[1][2], distributions=DISTS, user_attrs=bad,
            constraints={"memory_bytes": 3.0},  # infeasible: over the budget
        ))  # fmt: skip
        for reason in ("crash: probe exited 3: boom", "crash: probe killed by SIGKILL", "hang: x"):
            study.add_trial(optuna.trial.create_trial(
                state=TrialState.FAIL, user_attrs={"fail_reason": reason}
            ))  # fmt: skip
    return spec


@pytest.fixture
def spec(tmp_path: Path, tiny: tuple[Path, Path]) -> StudySpec:
    return build(tmp_path / "s", tiny[1])


def _text(spec: StudySpec) -> str:
    console = Console(record=True, width=220)
    show(spec, console)
    return console.export_text()


def test_show_with_failures(spec: StudySpec) -> None:
    text = _text(spec)
    assert "Pareto front" in text and "unconfirmed: single measurement" in text
    assert "crash" in text and "2" in text and "hang" in text  # failures grouped by kind
    assert "knob importance for decode_tok_s" in text  # Optuna's evaluator ran
    assert "noise floor" in text and "2.0%" in text
    assert "500" not in text.split("best trial per objective")[1]  # infeasible never best


def test_show_with_one_completed_trial(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=1)
    text = _text(spec)
    assert "0 (baseline)" in text and "need >= 3 completed searched trials" in text
    assert "failures: none" in text


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
    argv = ["export", str(spec.path), "--pick", "fastest", "--max-memory", "5e7", "-o",
            str(tmp_path / "t.toml")]  # fmt: skip
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


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.srcs: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._in = True
            self.scripts.append("")
            self.srcs += [v or "" for k, v in attrs if k == "src"]

    def handle_endtag(self, tag: str) -> None:
        self._in = self._in and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in:
            self.scripts[-1] += data


def test_report_is_offline_html_with_the_plots_data(spec: StudySpec, tmp_path: Path) -> None:
    out = write_report(spec, tmp_path / "report.html")
    parser = _Scripts()
    parser.feed(out.read_text())
    parser.close()
    assert parser.srcs == []  # nothing fetched from a CDN: works offline
    bundles = [s for s in parser.scripts if "plotly.js v" in s[:2000]]
    assert len(bundles) == 1  # plotly.js inline exactly once
    plots = "\n".join(s for s in parser.scripts if "Plotly.newPlot" in s)
    assert plots.count("Plotly.newPlot") >= 8  # projections, 3-D, HV, importances, slices, latency
    assert "trial 3" in plots and "130.0" in plots
    # Bytes are plotted in one unit per axis, the unit named in the title (150e6 B = 143 MiB).
    assert "memory_bytes (MiB)" in plots and "143.05" in plots and "150000000.0" not in plots
    assert '"name":"baseline"' in plots and "latency_p99_s" in plots


def test_report_on_a_single_trial_study(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=1)
    text = write_report(spec, tmp_path / "r.html").read_text()
    assert "need &gt;= 3 completed searched trials" in text


def test_dashboard_command_line_and_missing_dependency(
    spec: StudySpec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    argv = dashboard_argv(spec, 8123, executable="optuna-dashboard")
    assert argv == ["optuna-dashboard", spec.storage, "--host", HOST, "--port", "8123"]
    assert HOST == "127.0.0.1"
    monkeypatch.setattr("shutil.which", lambda _name: None)
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    assert main(["dashboard", str(spec.path)]) == 1
    err = capsys.readouterr().err
    assert "optuna-dashboard is not installed" in err and "pip install optuna-dashboard" in err


def test_confirm_changes_medians_keeps_samples(spec: StudySpec, tmp_path: Path) -> None:
    """The study's stand-in probe reports 1.0 for every metric: re-measured medians move."""
    before = {t.number: t.user_attrs["samples"] for t in load_results(spec).study.trials
              if t.state == TrialState.COMPLETE}  # fmt: skip
    summary = confirm_study(spec, repeats=2, note=lambda _s: None)
    assert {1, 2, 3} <= set(summary.trials) and summary.failures == []
    res = load_results(spec)
    for n in (1, 2, 3):
        rec = res.study.user_attrs[f"confirmed_trial_{n}"]
        assert rec["metrics"]["decode_tok_s"] == 1.0 != rec["before"]["decode_tok_s"]
        assert rec["samples"]["decode_tok_s"] == [1.0, 1.0] and rec["repeats"] == 2
        assert rec["ratio_to_baseline"]["decode_tok_s"] == 1.0
        assert res.study.trials[n].user_attrs["samples"] == before[n]  # originals kept
        assert res.by_number(n).note == "confirmed: 2 re-measurements"
    base = res.study.user_attrs["confirmed_trial_0"]
    assert len(base["samples"]["decode_tok_s"]) == 2 * len(summary.trials)  # B before each T
    f = export(res, tmp_path / "t.toml", pick="fastest")
    prov = tomllib.loads((tmp_path / "t.toml").read_text())["provenance"]
    assert prov["measurement"].startswith("confirmed") and f.medians["decode_tok_s"] == 1.0


@pytest.mark.parametrize("command", ["export", "report"])
def test_output_that_is_a_directory_is_a_one_line_error(
    spec: StudySpec, tmp_path: Path, capsys: Any, command: str
) -> None:
    assert main([command, str(spec.path), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is a directory" in err and len(err.splitlines()) == 1
