"""Search spaces: ranges, choices, conditions, virtual knobs and the baseline's params."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from ar_helpers import SPACES

from autoresearch.errors import SpaceError
from autoresearch.space import load_space, to_config
from engine.errors import ConfigError


def space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(text)
    return p


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


@pytest.mark.parametrize(
    ("when", "needle"),
    [
        ("{ prefetch = { lt = 3 } }", "prefetch"),
        ('{ prefetch = { in = "none" } }', "list"),
        ('{ io_threads = { gt = "2" } }', "number"),
    ],
)
def test_bad_condition_argument_is_refused_at_load(tmp_path: Path, when: str, needle: str) -> None:
    p = tmp_path / "space.toml"
    p.write_text(
        '[knobs.prefetch]\nchoices = ["none", "next_layer"]\n'
        "[knobs.io_threads]\nlow = 1\nhigh = 8\n"
        f"[knobs.prefetch_depth]\nlow = 1\nhigh = 2\nwhen = {when}\n"
    )
    with pytest.raises(SpaceError, match=needle):
        load_space(p)


@pytest.mark.parametrize(
    "text",
    [
        '[fixed]\ncache_fraction = "big"\n[knobs.io_threads]\nlow = 1\nhigh = 2\n',
        "[knobs.cache_fraction]\nchoices = [0.5, 2.0]\n",
        '[knobs.cache_fraction]\nchoices = ["half"]\n',
    ],
)
def test_cache_fraction_outside_0_1_is_refused_everywhere(tmp_path: Path, text: str) -> None:
    p = tmp_path / "space.toml"
    p.write_text(text)
    with pytest.raises(SpaceError, match=r"cache_fraction must (be a number in|lie in) \[0, 1\]"):
        load_space(p)


def test_fraction_range_with_integer_bounds_is_still_a_float_range(tmp_path: Path) -> None:
    # TOML `low = 0` / `high = 1` are ints; a fraction knob must not collapse to {0, 1}.
    p = tmp_path / "space.toml"
    p.write_text("[knobs.cache_fraction]\nlow = 0\nhigh = 1\n")
    space = load_space(p)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [space.suggest(study.ask())["cache_fraction"] for _ in range(5)]
    assert all(0 < v < 1 for v in values), values


def test_experts_fraction_follows_top_k() -> None:
    """The demo space on a tiny mixtral (top-k 4) never asks for more than 4 experts."""
    space = load_space(SPACES / "demo.toml")
    knob = next(k for k in space.knobs if k.name == "experts_fraction")
    for frac in (knob.low, 0.75, knob.high):
        top4 = to_config({"experts_fraction": frac}, expert_bytes=1 << 20, top_k=4)
        top8 = to_config({"experts_fraction": frac}, expert_bytes=1 << 20, top_k=8)
        assert 2 <= top4.experts_per_token <= 4 and 4 <= top8.experts_per_token <= 8
    assert to_config({"experts_per_token": 8}, expert_bytes=1, top_k=4).experts_per_token == 4
    with pytest.raises(ConfigError, match="needs the model's top-k"):
        to_config({"experts_fraction": 0.5}, expert_bytes=1)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("[knobs.experts_fraction]\nlow = 0.0\nhigh = 1.0\n", "experts_fraction must be a number"),
        ("[knobs.experts_fraction]\nlow = 0.5\nhigh = 3.0\n", "in \\(0, 2\\]"),
        ("[knobs.experts_fraction]\nchoices = [0.5, 9]\n", "experts_fraction must be"),
        (
            "[fixed]\nexperts_fraction = -1\n[knobs.io_threads]\nlow = 1\nhigh = 2\n",
            "experts_fraction must be",
        ),
        (
            "[knobs.experts_fraction]\nlow = 0.5\nhigh = 1.0\n[knobs.experts_per_token]\nlow = 1\n"
            "high = 2\n",
            "not both",
        ),
    ],
)
def test_experts_fraction_errors(tmp_path: Path, body: str, match: str) -> None:
    p = tmp_path / "s.toml"
    p.write_text(body)
    with pytest.raises(SpaceError, match=match):
        load_space(p)
