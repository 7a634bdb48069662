"""Bench baselines: naive streaming computes what the engine computes; `bench` reports every row,
ratio and the roofline, and says "skipped" (not fail) when the source checkpoint is gone."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.config import EngineConfig
from engine.errors import CheckpointError
from engine.measure.naive import NaiveStreaming
from engine.runtime import Engine
from engine.store import Store

PROMPT = [5, 9, 17, 33, 65, 101, 7, 7]
SUITE = """name = "bench-test"
warmup_tokens = 1
[[prompts]]
ids = [5, 9, 17, 33, 65]
decode_tokens = 4
"""


@pytest.fixture(autouse=True)
def _no_disk_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint's disk probe is tested in test_machine; here it would only cost time."""
    from engine.measure import machine

    monkeypatch.setenv("MOE_ENGINE_CACHE_DIR", str(tmp_path / "machine-cache"))
    monkeypatch.setattr(machine, "_DISK_BW", {})
    monkeypatch.setattr(machine, "_measure", lambda path: 1.0)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_naive_logits_equal_the_engines_on_a_16bit_store(
    packed_store: Callable[..., Store], family: str
) -> None:
    store = packed_store(family)
    with Engine(store, EngineConfig(cache_bytes=0)) as engine:
        want = engine.generate(PROMPT, 4, keep_logits=True)
    naive = NaiveStreaming(store)
    got = naive.generate(PROMPT, 4, keep_logits=True)
    assert got.tokens == want.tokens
    for a, b in zip(got.logits, want.logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    c = naive.counters()
    # Nothing is cached: every routed expert of every step was read from the checkpoint.
    assert (
        c["expert_requests"] > 0 and c["bytes_read"] >= c["expert_requests"] * store.expert_nbytes
    )


def test_naive_refuses_a_checkpoint_that_is_not_the_stores_source(
    packed_store: Callable[..., Store], tiny_checkpoint: Callable[[str], Path], tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint("qwen3_moe"), other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["num_hidden_layers"] = 2  # fewer MoE layers than the store
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match store"):
        NaiveStreaming(packed_store("qwen3_moe"), other)


def _bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["bench", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_json_has_every_row_ratio_and_roofline(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    cfg = tmp_path / "cfg.toml"
    EngineConfig(cache_bytes=1 << 20, io_threads=2, read_chunk_bytes=1 << 16).to_toml(cfg)
    out = _bench(
        [str(packed_store("qwen3_moe").root), "--suite", str(suite), "--config", str(cfg)], capsys
    )
    names = [r["name"] for r in out["rows"]]
    assert names == ["mlx-lm resident", "naive streaming", "config"]
    for row in out["rows"]:
        assert row["status"] == "ok", row
        assert row["decode_tok_s"] > 0 and row["ttft_s"] > 0 and row["tokens"] == 4
        assert 0.0 <= row["cache_hit_rate"] <= 1.0 and row["peak_mlx_bytes"] > 0
    naive, config = out["rows"][1], out["rows"][2]
    assert naive["bytes_read_per_token"] >= config["bytes_read_per_token"] > 0
    for key in (
        "decode_config_over_resident",
        "decode_config_over_naive",
        "ttft_speedup_over_resident",
        "ttft_speedup_over_naive",
    ):
        assert out["ratios"][key] > 0
    ro = out["roofline"]
    assert ro["io_threads"] == 2 and ro["read_bytes"] <= 1 << 16
    assert ro["raw_gb_s"] > 0 and ro["efficiency"] > 0
    assert out["machine"]["id"] and out["machine"]["disk_read_gb_s"] == 1.0
    assert out["config"]["cache_bytes"] == 1 << 20


def test_bench_with_the_source_gone_skips_the_baselines(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint recorded in the store is gone: its rows are skipped with the reason.
    (A --source given by name that does not exist is an error: test_cli_errors.)"""
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    gone = tmp_path / "deleted-checkpoint"
    store = shutil.copytree(packed_store("qwen3_moe").root, tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["source"]["path"] = str(gone)
    (store / "manifest.json").write_text(json.dumps(manifest))
    out = _bench([str(store), "--suite", str(suite)], capsys)
    res, naive, config = out["rows"]
    for row in (res, naive):
        assert row["status"] == "skipped" and str(gone) in row["reason"]
        assert "--source" in row["reason"]
    assert config["status"] == "ok" and config["decode_tok_s"] > 0
    assert out["ratios"]["decode_config_over_resident"] is None
    # The table form prints the reason too.
    assert main(["bench", str(store), "--suite", str(suite)]) == 0
    assert "skipped" in capsys.readouterr().out
