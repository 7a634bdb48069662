"""Cheap first fidelities: a short probe, or the trace simulator, before the full probe."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
from ar_helpers import MAXMIN, write_study
from optuna.trial import TrialState

from autoresearch import fidelity
from autoresearch.errors import StudyFileError
from autoresearch.loop import run_study
from autoresearch.study_file import load_study_file

SUITE = textwrap.dedent(
    """
    warmup_tokens = 4
    [[prompts]]
    ids = [1, 2, 3]
    decode_tokens = 64
    [[prompts]]
    ids = [4, 5]
    decode_tokens = 64
    """
)


CHEAP_STAND_IN = textwrap.dedent(
    """
    import json, pathlib, sys
    here, suite = pathlib.Path(sys.argv[1]), sys.argv[2]
    cheap = "autoresearch-cheap" in suite
    n = here / ("n_cheap" if cheap else "n_full")
    k = int(n.read_text()) if n.exists() else 0
    n.write_text(str(k + 1))
    # every later candidate is worse in every objective: the cheap probe can see it
    m = {"decode_tok_s": 100.0 - 10 * k, "memory_bytes": 100.0 + 10 * k,
         "kl_mean": 1.0 + k, "spread": {}, "samples": {}, "config": {}, "machine": {}}
    print(json.dumps(m))
    """
)


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


def test_cheap_suite_cuts_prompts_and_tokens(tmp_path: Path) -> None:
    import tomllib

    full = tmp_path / "suite.toml"
    full.write_text(SUITE)
    out = fidelity.cheap_suite(full, tmp_path / "c.toml", prompts=1, decode_tokens=12)
    doc = tomllib.loads(out.read_text())
    assert doc["prompts"] == [{"ids": [1, 2, 3], "decode_tokens": 12}]
    with pytest.raises(fidelity.FidelityError, match="must exceed the suite's warmup_tokens"):
        fidelity.cheap_suite(full, tmp_path / "c.toml", prompts=1, decode_tokens=4)
    (tmp_path / "empty.toml").write_text("seed = 0\n")
    with pytest.raises(fidelity.FidelityError, match=r"no \[\[prompts\]\]"):
        fidelity.cheap_suite(tmp_path / "empty.toml", out, prompts=1, decode_tokens=12)


def test_promote_only_candidates_that_could_reach_the_front() -> None:
    seen = [[10.0, 100.0], [5.0, 50.0], [2.0, 20.0]]
    tol = [0.05, 0.05]
    assert fidelity.promote([1.0, 1.0], seen[:2], MAXMIN, tol)  # warmup: always
    assert not fidelity.promote([4.0, 60.0], seen, MAXMIN, tol)  # (5, 50) beats it clearly
    assert fidelity.promote([4.9, 51.0], seen, MAXMIN, tol)  # within the tolerance
    assert fidelity.promote([20.0, 200.0], seen, MAXMIN, tol)  # a new extreme


def test_cheap_probe_prunes_and_counts_saved(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    p = write_study(tmp_path, store=tiny[1])
    (tmp_path / "cheap_stand_in.py").write_text(CHEAP_STAND_IN)
    text = p.read_text().split("[probe]")[0].replace("baseline_repeats = 3", "")
    text += (
        f'[probe]\nprobe_command = ["{{python}}", "{tmp_path / "cheap_stand_in.py"}", '
        f'"{tmp_path}", "{{suite}}"]\n[constraints]\nmemory_bytes = {{ max = 1e12 }}\n'
        '[fidelity]\nscreen = "probe"\nprobe_decode_tokens = 12\n'
    )
    p.write_text(text)
    spec = load_study_file(p)
    summary = run_study(spec, n_trials=7)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    states = [t.state for t in study.trials]
    # baseline + 3 warm-up promotions measured for real; the 3 later, worse ones pruned
    assert states == [TrialState.COMPLETE] * 4 + [TrialState.PRUNED] * 3
    assert fidelity.saved(study) == 3 and summary.screened == 3
    assert study.trials[5].user_attrs["fidelity"] == "cheap only"
    assert study.trials[5].user_attrs[fidelity.CHEAP_KEY]["decode_tok_s"] == 60.0  # 5th cheap call
    assert (tmp_path / "n_full").read_text() == "4"


def test_fidelity_table_errors(tmp_path: Path) -> None:
    p = write_study(tmp_path, store=tmp_path)
    base = p.read_text()
    p.write_text(base + '\n[fidelity]\nscreen = "short"\n')
    with pytest.raises(StudyFileError, match="'none', 'trace' or 'probe'"):
        load_study_file(p)
    p.write_text(base + '\n[fidelity]\nscreen = "probe"\nprobe_prompts = 0\n')
    with pytest.raises(StudyFileError, match=r"fidelity\.probe_prompts must be an integer >= 1"):
        load_study_file(p)


def test_trace_screen_prunes_unpromising_candidates(
    tmp_path: Path,
    tiny: tuple[Path, Path],
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
    tiny: tuple[Path, Path],
) -> None:
    p = write_study(tmp_path, store=tiny[1], space="io.toml")
    p.write_text(p.read_text() + '\n[fidelity]\nscreen = "trace"\n')
    with pytest.raises(StudyFileError, match="io_mode"):
        load_study_file(p)
    p.write_text(p.read_text().replace('screen = "trace"', 'screen = "magic"'))
    with pytest.raises(StudyFileError, match=r"fidelity\.screen"):
        load_study_file(p)


@pytest.mark.parametrize(
    ("knob", "limit"),
    [("prefetch_depth", "low = 1\nhigh = 8"), ("prefetch_width", "choices = [4, 64]")],
)
def test_trace_screen_refuses_prefetch_a_trace_does_not_record(
    tmp_path: Path, tiny: tuple[Path, Path], knob: str, limit: str
) -> None:
    """A trace ranks 4 layers ahead, 32 experts each: a space reaching past that is refused at
    load rather than simulated as if capped."""
    from engine import contract

    space = tmp_path / "deep.toml"
    space.write_text(CACHE_ONLY + f"\n[knobs.{knob}]\n{limit}\n")
    p = write_study(tmp_path, store=tiny[1], kind=None, space=str(space))
    p.write_text(p.read_text() + '\n[fidelity]\nscreen = "trace"\n')
    cap = contract.TRACE_RANK_DEPTH if knob == "prefetch_depth" else contract.TRACE_RANK_WIDTH
    with pytest.raises(StudyFileError, match=rf"models {knob} up to {cap}"):
        load_study_file(p)
    space.write_text(CACHE_ONLY + f"\n[knobs.{knob}]\nlow = 1\nhigh = {cap}\n")
    load_study_file(p)  # at the limit: accepted
