"""Bad search-space and study files get errors naming the file, the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_autoresearch_helpers import SPACES, write_study

from autoresearch.cli import main
from autoresearch.errors import SpaceError, StorageError, StudyFileError
from autoresearch.space import load_space
from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file

REPO = Path(__file__).resolve().parent.parent


def space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


def test_shipped_spaces_and_studies_load() -> None:
    for name in ("default", "io", "quality"):
        assert load_space(SPACES / f"{name}.toml").knobs
    demo = load_study_file(REPO / "studies/demo.toml")
    assert demo.synth == {"family": "qwen3_moe", "preset": "small", "seed": 0}
    assert demo.storage == f"sqlite:///{REPO / 'studies' / 'demo.db'}"
    assert [m for m, _ in demo.objectives] == ["decode_tok_s", "memory_bytes", "kl_mean"]
    assert load_study_file(REPO / "studies/overnight.toml").synth["preset"] == "bench"


def test_baseline_params_are_engine_defaults_and_respect_conditions() -> None:
    params = load_space(SPACES / "default.toml").baseline_params()
    assert params["cache_policy"] == "lru" and params["prefetch"] == "none"
    # Inactive under the defaults (lru, no prefetch): not part of the baseline.
    assert "pinned_fraction" not in params and "prefetch_depth" not in params


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[knobs.cache_sizee]\nlow = 1\nhigh = 2\n", "knobs.cache_sizee: unknown knob"),
        ("[knobs.io_threads]\nlow = 1\nhigh = 1000\n", "knobs.io_threads: the engine refuses"),
        ("[knobs.read_chunk_bytes]\nchoices = [1000]\n", "read_chunk_bytes.choices"),
        ("[knobs.cache_fraction]\nlow = 0.1\nhigh = 2.0\n", "must lie in [0, 1]"),
        ("[knobs.io_threads]\nlow = 8\nhigh = 2\n", "low (8) is above high (2)"),
        (
            "[knobs.prefetch_depth]\nlow = 1\nhigh = 2\n"
            'when = { prefetch = { not_in = ["none"] } }\n',
            "condition on unknown knob 'prefetch'",
        ),
        (
            '[knobs.io_mode]\nchoices = ["direct"]\nwhen = { bogus = { in = [1] } }\n',
            "condition on unknown knob 'bogus'",
        ),
        ('[fixed]\nio_mode = "floppy"\n[knobs.io_threads]\nlow = 1\nhigh = 2\n', "fixed"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = space(tmp_path, text)
    with pytest.raises(SpaceError) as e:
        load_space(p)
    assert str(p) in str(e.value) and needle in str(e.value)


def test_unknown_metric_in_objective_and_constraint(tmp_path: Path) -> None:
    obj = '[[objectives]]\nmetric = "tok_per_s"\ndirection = "maximize"\n'
    p = write_study(tmp_path / "a", store=tmp_path, objectives=obj)
    with pytest.raises(StudyFileError, match=r"objectives\[0\].metric: unknown metric 'tok_per_s'"):
        load_study_file(p)
    p = write_study(tmp_path / "b", store=tmp_path, constraints="p99 = { max = 1.0 }")
    with pytest.raises(StudyFileError, match=r"constraints\.p99: unknown metric"):
        load_study_file(p)


def test_missing_model_or_store(tmp_path: Path) -> None:
    p = write_study(tmp_path / "a", store=tmp_path / "nope")
    with pytest.raises(StudyFileError, match=r"model.store: .*nope not found"):
        load_study_file(p)
    p = write_study(tmp_path / "b", model=tmp_path / "nockpt")
    with pytest.raises(StudyFileError, match=r"model\.path: .* not a checkpoint"):
        load_study_file(p)


def test_fixed_store_with_variant_space_is_refused(tmp_path: Path) -> None:
    p = write_study(tmp_path, store=tmp_path, space="quality.toml")
    with pytest.raises(StudyFileError, match=r"fixed store but .* varies quant_bits"):
        load_study_file(p)


@pytest.mark.parametrize(
    ("url", "needle"),
    [("sqlite:////no/such/dir/x.db", "does not exist"), ("nosuchdb://x", "unknown storage")],
)
def test_unopenable_storage(tmp_path: Path, url: str, needle: str) -> None:
    p = write_study(tmp_path, store=tmp_path, extra_study=f'storage = "{url}"')
    with pytest.raises(StorageError, match=f"study.storage: .*{needle}"):
        open_study(load_study_file(p))


def test_cli_error_is_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path / "nope")
    assert main(["run", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "model.store" in err


def test_status_of_a_study_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path)
    assert main(["status", str(p)]) == 1
    assert "no study 'study'" in capsys.readouterr().err
    assert not (tmp_path / "study.db").exists()  # a read-only command never creates a file


def test_conditions_hold_in_every_sample_and_cache_fraction_maps() -> None:
    import optuna

    from autoresearch.space import to_config

    sp = load_space(SPACES / "default.toml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(40):
        knobs = sp.suggest(study.ask())
        assert ("quant_group_size" in knobs) == (knobs["quant_bits"] < 16)
        assert ("pinned_fraction" in knobs) == (knobs["cache_policy"] == "pinned")
        assert ("prefetch_depth" in knobs) == (knobs["prefetch"] != "none")
    # 0.25 x 1,000,000 bytes = 250,000, rounded down to whole 4 KiB pages: 61 x 4096.
    assert to_config({"cache_fraction": 0.25}, expert_bytes=1_000_000).cache_bytes == 249_856


def test_a_key_with_a_newline_is_quoted_in_a_one_line_error(tmp_path: Path) -> None:
    # Found by the property test: TOML allows any quoted key, and printing it bare broke the
    # error over two lines.
    p = tmp_path / "x.toml"
    p.write_text(
        f'[study]\nspace = "{SPACES / "demo.toml"}"\n'
        '[model]\nsynth = { family = "qwen3_moe", "a\\nb" = 1 }\n'
    )
    with pytest.raises(StudyFileError) as e:
        load_study_file(p)
    assert "\n" not in str(e.value) and "'a\\nb'" in str(e.value)
