"""Cheap first fidelity: the trace simulator screens cache/prefetch candidates before the probe."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from test_autoresearch_helpers import tiny, write_study  # noqa: F401 - fixture

from autoresearch.errors import StudyFileError
from autoresearch.loop import run_study
from autoresearch.study_file import load_study_file

CACHE_ONLY = """
[knobs.cache_fraction]
low = 0.01
high = 1.0
log = true

[knobs.prefetch]
choices = ["none", "next_layer", "previous_token"]
"""


def _screened_study(tmp_path: Path, store: Path, keep: float) -> Path:
    space = tmp_path / "cache_only.toml"
    space.write_text(CACHE_ONLY)
    p = write_study(tmp_path, store=store, kind=None, space=str(space))
    p.write_text(p.read_text() + f'\n[fidelity]\nscreen = "trace"\nkeep = {keep}\n')
    return p


def test_trace_screen_prunes_unpromising_candidates(
    tmp_path: Path,
    tiny: tuple[Path, Path],  # noqa: F811 - fixture
) -> None:
    spec = load_study_file(_screened_study(tmp_path, tiny[1], keep=1.0))
    summary = run_study(spec, n_trials=6)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    searched = [t for t in study.trials if not t.user_attrs.get("baseline")]
    assert all("screen_estimate" in t.user_attrs for t in searched)
    pruned = [t for t in searched if t.state == TrialState.PRUNED]
    done = [t for t in searched if t.state == TrialState.COMPLETE]
    # keep = 1.0: only candidates estimated at least as fast as the best so far (or smaller
    # than any measured one) get measured; with six samples some are always screened out.
    assert pruned and done and summary.screened == len(pruned)
    assert study.user_attrs["fidelity_full_probes_saved"] == len(pruned)  # the study says so
    assert all("decode_tok_s" not in t.user_attrs for t in pruned)  # never measured
    assert all(t.user_attrs["decode_tok_s"] > 0 for t in done)  # real measurements
    est = done[0].user_attrs["screen_estimate"]
    assert 0.0 <= est["cache_hit_rate"] <= 1.0 and est["decode_tok_s_estimate"] > 0


def test_trace_screen_needs_a_cache_prefetch_only_space(
    tmp_path: Path,
    tiny: tuple[Path, Path],  # noqa: F811 - fixture
) -> None:
    p = write_study(tmp_path, store=tiny[1], space="io.toml")
    p.write_text(p.read_text() + '\n[fidelity]\nscreen = "trace"\n')
    with pytest.raises(StudyFileError, match="io_mode"):
        load_study_file(p)
    p.write_text(p.read_text().replace('screen = "trace"', 'screen = "magic"'))
    with pytest.raises(StudyFileError, match=r"fidelity\.screen"):
        load_study_file(p)
