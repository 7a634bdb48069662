"""What `engine probe` and `engine run` report: no measured decode step is null (not 0.0),
`run` does not count page cache left by an earlier run, a store-mismatch error names the store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoresearch.trial import parse_metrics
from engine import pagecache
from engine.cli import main
from engine.config import EngineConfig
from engine.measure.probe import probe, store_files
from engine.store import Store
from engine.suite import load_suite


def test_suite_with_decode_tokens_within_warmup_reports_null_not_zero(
    packed_store: Callable[..., Store], tmp_path: Path
) -> None:
    store = packed_store("qwen3_moe")
    path = tmp_path / "short.toml"
    # Each prompt decodes 3 tokens and the first 4 are warm-up: nothing sustained is measured.
    path.write_text("warmup_tokens = 4\n[[prompts]]\nids = [1, 2, 3]\ndecode_tokens = 3\n")
    suite = load_suite(path, vocab_size=int(store.config["vocab_size"]))
    out = probe(store, EngineConfig(), suite, cold=False, repeats=2)
    for key in ("decode_tok_s", "latency_p50_s", "latency_p99_s", "latency_max_s"):
        assert out[key] is None, key  # 0.0 s latency would rank best on a latency objective
    assert out["decode_tokens_measured"] == 0
    json.dumps(out)  # null in the metrics JSON
    # The study side: a null objective is a failed trial, never a best one.
    line = json.dumps({**out, "memory_bytes": 1.0, "kl_mean": 0.0})
    _, error = parse_metrics(line, ["decode_tok_s", "memory_bytes", "kl_mean"])
    assert error is not None and "decode_tok_s" in error


def _warm(store: Store) -> int:
    """Read every store file so the page cache holds it; returns the resident bytes."""
    for p in store_files(store):
        Path(p).read_bytes()
    return pagecache.resident_bytes_many(store_files(store))


@pytest.mark.skipif(not pagecache.SUPPORTED, reason=pagecache.UNSUPPORTED_NOTE)
def test_engine_run_does_not_count_page_cache_left_by_an_earlier_run(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: Any
) -> None:
    store = packed_store("qwen3_moe")
    cfg = tmp_path / "c.toml"
    # Direct reads bypass the page cache, so all a run itself leaves there is the dense weights:
    # anything more was left by an earlier reader.
    EngineConfig(io_mode="direct").to_toml(cfg)
    argv = [
        "run",
        str(store.root),
        "--config",
        str(cfg),
        "--prompt-ids",
        "1,2,3",
        "--max-tokens",
        "2",
        "--json",
    ]

    def page_cache_after(warm: bool) -> int:
        if warm:
            assert _warm(store) >= sum(Path(p).stat().st_size for p in store_files(store)) * 0.9
        else:
            pagecache.evict_all(store_files(store))
        assert main(argv) == 0
        return int(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["page_cache_bytes"])

    cold = page_cache_after(warm=False)
    after_warm = page_cache_after(warm=True)
    # The run starts evicted either way: what an earlier reader left is not this run's memory.
    assert after_warm == pytest.approx(cold, rel=0.25, abs=4 * pagecache.PAGE)
    experts = sum(store.root.joinpath(le.file).stat().st_size for le in store.layers)
    assert after_warm < experts / 2  # the warmed expert files were not counted


def test_store_mismatch_error_names_the_store_the_config_was_tuned_on(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: Any
) -> None:
    store = packed_store("qwen3_moe")
    cfg = tmp_path / "tuned.toml"
    EngineConfig().to_toml(
        cfg,
        extra_tables={
            "provenance": {"store": "/data/stores/big-b4", "store_fingerprint": "0" * 64}
        },
    )
    other = tmp_path / "copy"
    shutil.copytree(store.root, other)
    argv = ["run", str(other), "--config", str(cfg), "--prompt-ids", "1", "--max-tokens", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "tuned on store /data/stores/big-b4" in err and "--force" in err
    assert len(err.strip().splitlines()) == 1
