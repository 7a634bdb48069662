"""Study files: every table and key checked, errors that name the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from ar_helpers import REPO, SPACES, one_line_error, write_study

from autoresearch import racing, sampler
from autoresearch.cachedir import resolve_cache_dir
from autoresearch.cli import main
from autoresearch.errors import StudyFileError
from autoresearch.space import load_space
from autoresearch.storage import open_study
from autoresearch.study_file import load_study_file


def test_shipped_spaces_and_studies_load() -> None:
    for name in ("default", "io", "quality"):
        assert load_space(SPACES / f"{name}.toml").knobs
    demo = load_study_file(REPO / "studies/demo.toml")
    assert demo.synth == {"family": "qwen3_moe", "preset": "small", "seed": 0}
    assert demo.storage == f"sqlite:///{REPO / 'studies' / 'demo.db'}"
    assert [m for m, _ in demo.objectives] == ["decode_tok_s", "memory_bytes", "kl_mean"]
    assert load_study_file(REPO / "studies/overnight.toml").synth["preset"] == "bench"


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


@pytest.mark.parametrize(
    ("top", "study", "needle"),
    [
        ('objectives = ["decode_tok_s"]', "", "objectives[0]"),
        ("probe = 1", "", "[probe]"),
        ("", "space = 5", "study.space"),
        ("", 'cold = "false"', "study.cold"),
        ("", "storage = 5", "study.storage"),
    ],
)
def test_malformed_study_values_are_one_line_errors(
    tmp_path: Path,
    tiny: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    top: str,
    study: str,
    needle: str,
) -> None:
    p = write_study(tmp_path, store=tiny[1], kind=None)
    key = study.split(" = ")[0]
    lines = [ln for ln in p.read_text().splitlines() if not (key and ln.startswith(key + " = "))]
    text = "\n".join(lines).replace("[study]\n", f"[study]\n{study}\n", 1)
    p.write_text(f"{top}\n{text}")
    assert main(["status", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err


def test_every_family_the_engine_synthesizes_is_allowed(tmp_path: Path) -> None:
    from engine.synth.tiny import make_config, synth_families

    p = tmp_path / "s.toml"
    for family in synth_families():  # each family the engine has a tiny config for
        make_config(family)  # ... and can build
        p.write_text(
            f'[study]\nspace = "{SPACES / "io.toml"}"\n[model]\nsynth = {{ family = "{family}" }}\n'
        )
        assert load_study_file(p).synth == {"family": family, "preset": "tiny", "seed": 0}
    p.write_text(p.read_text().replace(f'"{family}"', '"qwen9_moe"'))
    with pytest.raises(StudyFileError, match=r"model\.synth\.family must be one of"):
        load_study_file(p)


@pytest.mark.parametrize(
    ("where", "line", "needle"),
    [
        ("study", "n_trails = 50", "study.n_trails"),
        ("model", 'storee = "x"', "model.storee"),
        ("synth", ', famliy = "x"', "model.synth.famliy"),
        ("end", '[fidelity]\nscrean = "trace"', "fidelity.screan"),
        ("end", '[probe]\nsuit = "x.toml"', "probe.suit"),
    ],
)
def test_misspelt_study_key_is_refused(tmp_path: Path, where: str, line: str, needle: str) -> None:
    # A typo'd key was silently ignored: the study ran with the default instead.
    at = {k: line if k == where else "" for k in ("study", "model", "synth", "end")}
    p = tmp_path / "s.toml"
    p.write_text(
        f'[study]\nspace = "{SPACES / "io.toml"}"\n{at["study"]}\n'
        f'[model]\nsynth = {{ family = "olmoe"{at["synth"]} }}\n{at["model"]}\n{at["end"]}\n'
    )
    with pytest.raises(StudyFileError, match=re.escape(needle)):
        load_study_file(p)


@pytest.mark.parametrize(
    ("model", "needle"),
    [("path = 5", "model.path"), ('synth = { family = "olmoe", seed = "x" }', "model.synth.seed")],
)
def test_bad_model_value_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str, needle: str
) -> None:
    p = tmp_path / "s.toml"
    p.write_text(f'[study]\nspace = "{SPACES / "io.toml"}"\n[model]\n{model}\n')
    assert main(["status", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err, err


def test_cache_dir_order_env_then_study_then_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AUTORESEARCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(None, tmp_path) == tmp_path / "xdg" / "moe-autoresearch"
    assert resolve_cache_dir("c", tmp_path / "studies") == tmp_path / "studies" / "c"
    monkeypatch.setenv("AUTORESEARCH_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir("c", tmp_path) == tmp_path / "env"


def test_copied_study_file_names_both_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "mine" / "demo.toml"
    copy.parent.mkdir()
    copy.write_text((REPO / "studies" / "demo.toml").read_text())
    assert main(["status", str(copy)]) == 1
    err = one_line_error(capsys)
    assert str(tmp_path / "search_spaces" / "demo.toml") in err  # where it looked
    assert str(copy.parent) in err and "'../search_spaces/demo.toml'" in err  # and why
    # Next to a copy of the spaces the same relative path works.
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "demo.toml").write_text((SPACES / "demo.toml").read_text())
    assert load_study_file(copy).space.path == tmp_path / "search_spaces" / "demo.toml"


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("trial_timeout_s = inf", "study.trial_timeout_s"),
        ("trial_timeout_s = nan", "study.trial_timeout_s"),
        ("trial_timeout_s = 1e300", "study.trial_timeout_s"),
        ("timeout_s = -inf", "study.timeout_s"),
        ('machines = "many"', "study.machines"),
        ("heartbeat_interval = 0", "study.heartbeat_interval"),
        ("heartbeat_interval = 10\ngrace_period = 5", "study.grace_period"),
        ('storage = "redis://x"', "study.storage"),
    ],
)
def test_bad_study_values_are_refused_at_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str, key: str
) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(
        p.read_text()
        .replace("trial_timeout_s = 20\n", "")
        .replace("[study]\n", f"[study]\n{line}\n")
    )
    assert main(["run", str(p)]) == 1
    err = one_line_error(capsys)
    assert str(p) in err and key in err


@pytest.mark.parametrize("bound", ["{ max = -5 }", "{ max = 0 }", "{ max = nan }"])
def test_impossible_memory_limit_is_refused(tmp_path: Path, bound: str) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(p.read_text().replace("memory_bytes = { max = 1e12 }", f"memory_bytes = {bound}"))
    with pytest.raises(StudyFileError, match=re.escape(f"{p}: constraints.memory_bytes.max")):
        load_study_file(p)


def test_study_file_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_bytes(p.read_bytes().replace(b"sampler", b"sam\xffpler"))
    assert main(["status", str(p)]) == 1
    assert "not UTF-8" in one_line_error(capsys)


@pytest.mark.parametrize("args", [["--n-trials", "-2"], ["--timeout", "-5"], ["--timeout", "nan"]])
def test_negative_counts_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", str(tmp_path / "x.toml"), *args])
    assert e.value.code == 2 and "must be" in capsys.readouterr().err


def test_study_file_reads_sampler_racing_and_probe_fidelity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = write_study(tmp_path, store=tmp_path)
    p.write_text(
        p.read_text().replace('sampler = "random"', 'sampler = "auto"')
        + "\n[racing]\nmax_repeats = 4\n"
        + '[fidelity]\nscreen = "probe"\nprobe_prompts = 2\n'
    )
    spec = load_study_file(p)
    assert spec.sampler == "auto" and spec.racing == racing.RacingSpec(max_repeats=4)
    assert (spec.screen, spec.probe_prompts, spec.probe_decode_tokens) == ("probe", 2, 16)
    # io.toml: 4 categorical knobs, 2 trials: auto -> GP where torch is, TPE where it is not
    monkeypatch.setattr(sampler, "gp_available", lambda: False)
    assert isinstance(open_study(spec).sampler, optuna.samplers.TPESampler)
    if sampler.importlib.util.find_spec("torch") is not None:
        monkeypatch.setattr(sampler, "gp_available", lambda: True)
        assert isinstance(open_study(spec).sampler, optuna.samplers.GPSampler)
    p.write_text(p.read_text().replace("max_repeats = 4", "enabled = false"))
    assert load_study_file(p).racing is None
