"""Studies as Optuna's own tools see them: metric names, confirmed figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from ar_helpers import write_study

from autoresearch.confirm import confirm_study
from autoresearch.loop import run_study
from autoresearch.optuna_view import TABLE_KEY
from autoresearch.study_file import StudySpec, load_study_file

NAMES = ["decode_tok_s", "memory_bytes", "kl_mean"]


def _dashboard_api(storage: str, path: str) -> dict[str, Any]:
    """One GET on optuna-dashboard's own WSGI app (what its web page reads)."""
    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    app = optuna_dashboard.wsgi(storage)
    env: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(env)
    status: list[str] = []
    body = b"".join(app(env, lambda s, _h, *_a: status.append(s)))  # type: ignore[arg-type]
    assert status[0].startswith("200"), status
    return json.loads(body)


def _dashboard_study(storage: str, name: str) -> dict[str, Any]:
    """The dashboard's detail page data of study `name`, found by name as a user finds it."""
    listed = _dashboard_api(storage, "/api/studies")["study_summaries"]
    study_id = next(s["study_id"] for s in listed if s["study_name"] == name)
    return _dashboard_api(storage, f"/api/studies/{study_id}")


def test_run_sets_metric_names_that_optuna_dashboard_lists(
    tmp_path: Path, tiny: tuple[Path, Path]
) -> None:
    spec = load_study_file(write_study(tmp_path, store=tiny[1], kind="ok"))
    run_study(spec, n_trials=1)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert study.metric_names == NAMES
    detail = _dashboard_study(spec.storage, spec.name)
    assert detail["objective_names"] == NAMES  # not "Objective 0/1/2"


def test_confirmed_figures_are_visible_to_optuna_tools(spec: StudySpec) -> None:
    confirm_study(spec, repeats=1, note=lambda _s: None)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    assert study.metric_names == NAMES  # also on a study made before names were set
    rows = {r["trial"]: r for r in study.user_attrs[TABLE_KEY]}
    assert rows[0]["baseline"] is True and rows[1]["decode_tok_s"] == "1 tok/s"
    assert rows[1]["memory_bytes"] == "1 B" and rows[1]["repeats"] == 1
    detail = _dashboard_study(spec.storage, spec.name)
    note = detail["note"]["body"]
    assert "single in-loop measurements" in note and TABLE_KEY in note
    assert "| 1 | 1 | 1 tok/s | 1 B | 1 |" in note  # the stand-in probe measures 1 everywhere
    assert any(a["key"] == TABLE_KEY for a in detail["user_attrs"])
