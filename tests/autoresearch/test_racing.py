"""Racing: a trial is re-measured only while noise could change its verdict."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ar_helpers import MAXMIN, write_study

from autoresearch import hypervolume, racing
from autoresearch.errors import StudyFileError
from autoresearch.loop import run_study
from autoresearch.study_file import load_study_file

SPEC = racing.RacingSpec(max_repeats=3, z=2.0, min_noise=0.0)


class _Res:
    def __init__(self, v: float, error: str | None = None) -> None:
        self.metrics = {"decode_tok_s": v, "memory_bytes": 100.0, "spread": {}, "samples": {}}
        self.error, self.wall_s = error, 1.0


def test_racing_verdicts_by_hand() -> None:
    others = [[10.0, 100.0]]  # max speed, min memory
    noise = [0.05, 0.0]  # 5% speed noise: +-10% at z=2 on one probe
    assert racing.verdict([[5.0, 200.0]], others, MAXMIN, noise, SPEC) == "dominated"
    assert racing.verdict([[20.0, 50.0]], others, MAXMIN, noise, SPEC) == "front"
    # 9.5 tok/s at the same memory: 9.5 x 1.1 = 10.45 could beat 10 -> measure again
    assert racing.verdict([[9.5, 100.0]], others, MAXMIN, noise, SPEC) == "repeat"
    # four probes halve the interval (+-5%): 9.5 x 1.05 < 10 -> dominated
    assert racing.verdict([[9.5, 100.0]] * 4, others, MAXMIN, noise, SPEC) == "dominated"
    assert racing.verdict([[9.5, 100.0]] * 3, others, MAXMIN, [0.2, 0], SPEC) == "budget"
    assert racing.verdict([[1.0, 1.0]], [], MAXMIN, noise, SPEC) == "front"


def test_race_repeats_only_while_uncertain_and_merges_medians() -> None:
    seq = iter([9.5, 9.0, 9.2, 99.0])  # 10% noise: +-20%/sqrt(n) keeps each median in doubt
    results, final = racing.race(
        lambda: _Res(next(seq)),
        [[10.0, 100.0]],
        MAXMIN,
        ["decode_tok_s", "memory_bytes"],
        [0.1, 0.0],
        SPEC,
    )
    assert final == "budget" and len(results) == 3  # max_repeats, never the 4th value
    merged = racing.merge(results, ["decode_tok_s", "memory_bytes"])
    assert merged["decode_tok_s"] == 9.2 and merged["samples"]["decode_tok_s"] == [9.5, 9.0, 9.2]
    results, final = racing.race(
        lambda: _Res(1.0, "crash"), [], MAXMIN, ["decode_tok_s", "memory_bytes"], [0.05, 0.0], SPEC
    )
    assert len(results) == 1 and results[0].error == "crash"


@pytest.mark.parametrize(
    ("table", "match"),
    [
        ("max_repeats = 0", "max_repeats must be an integer >= 1"),
        ('max_repeats = "3"', "max_repeats must be an integer"),
        ("z = -1", "racing.z must be a number >= 0"),
        ("enabled = 1", "racing.enabled must be true or false"),
        ("max_repeat = 3", "unknown key.*racing.max_repeat"),
    ],
)
def test_racing_table_errors(tmp_path: Path, table: str, match: str) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text() + f"\n[racing]\n{table}\n")
    with pytest.raises(StudyFileError, match=match):
        load_study_file(p)


def test_racing_in_the_loop_records_measurements(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """Stand-in probe: every trial equals the baseline, so its front membership is up to the
    noise and it gets max_repeats measurements; the baseline keeps its fixed repeats."""
    p = write_study(tmp_path, store=tiny[1])
    p.write_text(p.read_text() + "\n[racing]\nmax_repeats = 2\n")
    spec = load_study_file(p)
    run_study(spec, n_trials=3)
    study = optuna.load_study(study_name=spec.name, storage=spec.storage)
    trials = study.trials
    assert [t.user_attrs["measurements"] for t in trials] == [3, 2, 2]
    assert trials[1].user_attrs["race"] == "budget"
    assert trials[1].user_attrs["samples"]["decode_tok_s"] == [1.0, 1.0]
    # the report's hypervolume curves work on a study the loop made (baseline included)
    c = hypervolume.curves(study, spec.space, seeds=2)
    assert len(c["study"]) == len(c["random"]) == 3
