"""Probe metrics mean what they say: types and ranges, cold vs warm, quality, simulator."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from engine import pagecache
from engine.cli import main
from engine.config import EngineConfig
from engine.errors import ProbeError
from engine.measure.probe import METRICS, probe
from engine.measure.reference import get_reference
from engine.measure.simulate import Rates, simulate
from engine.measure.trace import Trace
from engine.store import Store
from engine.suite import Suite, default_suite_path, load_suite

ROOT = Path(__file__).resolve().parents[1]


def _suite(store: Store) -> Suite:
    return load_suite(default_suite_path(store.root), vocab_size=int(store.config["vocab_size"]))


def _quarter_cache(store: Store) -> int:
    per = sum(t.nbytes * (2 if t.dtype == "bfloat16" else 1) for t in store.expert_tensors)
    return per * len(store.layers) * store.num_experts // 4


def test_probe_json_has_every_metric_with_sane_values(
    packed_store: Callable[..., Store], capsys: pytest.CaptureFixture
) -> None:
    store = packed_store("qwen3_moe", bits=4)
    assert main(["probe", str(store.root), "--repeats", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (*METRICS, "tokens", "cold", "config", "machine", "engine_version"):
        assert key in out, key
    for key in METRICS:
        assert isinstance(out[key], int | float), key
        assert out[key] >= 0, key
    for key in (
        "cache_hit_rate",
        "prefetch_precision",
        "prefetch_recall",
        "io_stall_fraction",
        "top1_agreement",
    ):
        assert 0.0 <= out[key] <= 1.0, key
    assert out["memory_bytes"] >= out["peak_rss_bytes"] > 0
    assert out["decode_bytes_read_per_token"] >= 0
    assert out["decode_tok_s"] > 0 and out["ttft_s"] > 0
    assert out["cold"] is True and out["repeats"] == 2
    suite = _suite(store)
    # TTFT per prompt length: every length of the suite, each the median over repeats
    lengths = {len(p.ids) for p in suite.prompts}
    by_len = out["ttft_by_prompt_tokens"]
    assert set(by_len) == {str(n) for n in lengths} and all(v > 0 for v in by_len.values())
    per_sample = out["samples"]["ttft_by_prompt_tokens"]
    for n, v in by_len.items():
        assert v == pytest.approx(float(np.median([s[n] for s in per_sample])))
    assert out["tokens"] == suite.decode_total
    assert out["warmup_tokens_excluded"] == suite.warmup_tokens * len(suite.prompts)
    assert len(out["samples"]["decode_tok_s"]) == 2 and "decode_tok_s" in out["spread"]
    assert isinstance(out["machine"], dict) and out["machine"]


def test_probe_text_summary(
    packed_store: Callable[..., Store], capsys: pytest.CaptureFixture
) -> None:
    assert main(["probe", str(packed_store("qwen3_moe").root), "--no-quality"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("decode_tok_s: ") for line in lines)
    assert any(line.startswith("ttft_by_prompt_tokens: ") for line in lines)
    assert "kl_mean: n/a" in lines


def test_quality_is_exact_at_16_bits_and_degrades_as_bits_fall(
    packed_store: Callable[..., Store],
) -> None:
    kls, top1 = [], []
    for bits in (16, 8, 2):
        store = packed_store("qwen3_moe", bits=bits)
        suite = _suite(store)
        out = probe(store, EngineConfig(), suite, reference=get_reference(store, suite))
        kls.append(out["kl_mean"])
        top1.append(out["top1_agreement"])
    assert kls[0] < 1e-9 and top1[0] == 1.0
    assert kls[0] < kls[1] < kls[2]
    # Synthetic residual streams are embedding-dominated, so argmax rarely flips: non-increasing.
    assert top1[2] <= top1[1] <= top1[0]


def test_fewer_experts_per_token_costs_quality(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe")
    suite = _suite(store)
    ref = get_reference(store, suite)
    full = probe(store, EngineConfig(), suite, reference=ref)
    fewer = probe(store, EngineConfig(experts_per_token=1), suite, reference=ref)
    assert fewer["kl_mean"] > full["kl_mean"] + 1e-4
    assert fewer["top1_agreement"] <= full["top1_agreement"]


def test_reference_is_cached_and_keyed_by_suite(packed_store: Callable[..., Store]) -> None:
    store = packed_store("mixtral")
    suite = _suite(store)
    a = get_reference(store, suite)
    files = sorted((store.root / "reference").glob("*.npz"))
    b = get_reference(store, suite)
    assert sorted((store.root / "reference").glob("*.npz")) == files and a.tokens == b.tokens
    shorter = Suite(suite.name, suite.source, suite.prompts[:1], suite.seed, suite.warmup_tokens)
    get_reference(store, shorter)
    assert len(list((store.root / "reference").glob("*.npz"))) == len(files) + 1


def test_quantized_store_without_source_needs_explicit_reference(
    packed_store: Callable[..., Store], tmp_path: Path
) -> None:
    src = packed_store("qwen3_moe", bits=4)
    dst = tmp_path / "s"
    shutil.copytree(src.root, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["source"]["path"] = str(tmp_path / "gone")
    (dst / "manifest.json").write_text(json.dumps(manifest))
    store = Store.open(dst)
    with pytest.raises(ProbeError, match="--reference"):
        get_reference(store, _suite(store))
    ref16 = packed_store("qwen3_moe")
    assert get_reference(store, _suite(store), str(ref16.root)).kind == "engine-16bit"


def test_cold_and_warm_differ_in_bytes_read_for_buffered_io(
    packed_store: Callable[..., Store],
) -> None:
    if not pagecache.SUPPORTED:
        pytest.skip(pagecache.UNSUPPORTED_NOTE)
    (ROOT / "build").mkdir(exist_ok=True)
    dst = ROOT / "build" / "probe-cold-warm"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(packed_store("qwen3_moe").root, dst)  # the real disk, not a tmpfs
    try:
        store = Store.open(dst)
        files = [store.root / le.file for le in store.layers]
        pagecache.evict_all(files)
        if pagecache.resident_bytes_many(files) > sum(f.stat().st_size for f in files) // 2:
            pytest.skip(f"{dst}: filesystem keeps pages after FADV_DONTNEED")
        cfg = EngineConfig(cache_bytes=0, io_mode="buffered")
        cold = probe(store, cfg, _suite(store), cold=True)
        warm = probe(store, cfg, _suite(store), cold=False)
        assert cold["cold"] is True and warm["cold"] is False
        assert cold["bytes_read_per_token"] > warm["bytes_read_per_token"]
        # The engine asked for the same bytes either way; only where they came from differs.
        assert cold["bytes_requested_per_token"] == warm["bytes_requested_per_token"]
        # Direct I/O bypasses the page cache: a decode step fetches from storage exactly what
        # the engine asked for (the prompt's reads are not in this figure).
        direct = probe(store, cfg.replace(io_mode="direct"), _suite(store), cold=False)
        assert direct["decode_bytes_read_per_token"] > 0
        assert direct["decode_bytes_read_per_token"] == pytest.approx(
            direct["bytes_requested_per_token"], rel=0.02
        )
    finally:
        shutil.rmtree(dst, ignore_errors=True)


@pytest.fixture(scope="module")
def traced(packed_store: Callable[..., Store], tmp_path_factory: pytest.TempPathFactory):
    store = packed_store("qwen3_moe")
    path = tmp_path_factory.mktemp("trace") / "t.npz"
    cfg = EngineConfig(cache_bytes=_quarter_cache(store), prefetch="next_layer")
    measured = probe(store, cfg, _suite(store), trace_path=str(path))
    return store, cfg, measured, Trace.load(path)


def test_trace_records_every_layer_step(traced) -> None:
    store, _, _, trace = traced
    steps_per_prompt = [p.decode_tokens for p in _suite(store).prompts]
    assert len(trace) == sum(steps_per_prompt) * len(store.layers)
    assert trace.meta["top_k"] == store.top_k
    decode = trace.phase == 1
    assert all(trace.fetch_experts(i).size == store.top_k for i in range(len(trace)) if decode[i])


def test_simulator_agrees_with_engine(traced) -> None:
    _, cfg, measured, trace = traced
    sim = simulate(trace, cfg)
    assert abs(sim["cache_hit_rate"] - measured["cache_hit_rate"]) <= 0.03
    assert abs(sim["prefetch_recall"] - measured["prefetch_recall"]) <= 0.03
    assert abs(sim["prefetch_precision"] - measured["prefetch_precision"]) <= 0.03
    # The engine's reads lie between the simulator's demand reads and demand + every guess
    # issued: a guess still queued when its layer runs is cancelled unread, a race the
    # simulator cannot replay (the faster the model, the more guesses it wins).
    got = measured["bytes_requested_per_token"]
    assert sim["demand_bytes_per_token"] <= got * 1.05
    assert got <= sim["bytes_read_per_token"] * 1.05
    est = simulate(trace, cfg, rates=Rates(compute_s_per_token=0.01, disk_bytes_per_s=1e9))
    assert 0 < est["decode_tok_s_estimate"] <= 100


@pytest.mark.parametrize(
    "changes",
    [
        {"prefetch": "previous_token", "prefetch_width": 2},
        {"prefetch": "previous_token", "prefetch_depth": 2},
        {"prefetch": "next_layer", "prefetch_depth": 3, "prefetch_width": 6},
        {"cache_policy": "lfu", "prefetch": "none"},
    ],
)
def test_simulator_agrees_on_configs_the_trace_was_not_recorded_with(
    traced, changes: dict[str, object]
) -> None:
    # Routing does not depend on cache/prefetch knobs: one trace stands for all of them.
    store, cfg, _, trace = traced
    other = cfg.replace(**changes)
    measured = probe(store, other, _suite(store))
    sim = simulate(trace, other)
    for key in ("cache_hit_rate", "prefetch_recall", "prefetch_precision"):
        assert abs(sim[key] - measured[key]) <= 0.03, key


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_smaller_cache_never_hits_more_on_the_same_trace(traced, policy: str) -> None:
    store, cfg, _, trace = traced
    total = _quarter_cache(store) * 4
    rates = [
        simulate(trace, cfg.replace(cache_bytes=total * f // 8, cache_policy=policy))[
            "cache_hit_rate"
        ]
        for f in range(9)
    ]
    assert rates == sorted(rates) and rates[0] == 0.0 and rates[-1] > rates[1]


def test_smaller_cache_never_hits_more_in_the_engine(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe")
    suite = _suite(store)
    q = _quarter_cache(store)
    rates = [
        probe(store, EngineConfig(cache_bytes=q * f), suite)["cache_hit_rate"] for f in (0, 1, 2, 4)
    ]
    assert rates == sorted(rates) and rates[0] == 0.0


def test_bad_suite_files(packed_store: Callable[..., Store], tmp_path: Path) -> None:
    store = packed_store("qwen3_moe")
    vocab = int(store.config["vocab_size"])
    cases = {
        "missing.toml": None,
        "bad.toml": "not = [valid",
        "empty.toml": "seed = 1\n",
        "range.toml": f"[[prompts]]\nids = [1, {vocab + 5}]\n",
        "text.toml": '[[prompts]]\ntext = "hi"\n',
        "neither.toml": "[[prompts]]\ndecode_tokens = 3\n",
        # A negative warm-up would make token_s[w:] keep only the last |w| latencies.
        "warmup.toml": "warmup_tokens = -2\n[[prompts]]\nids = [1, 2]\n",
        "gen.toml": "[generated]\nprompt_tokens = 0\n",
        "gendec.toml": "[generated]\ndecode_tokens = 0\n",
    }
    for name, body in cases.items():
        p = tmp_path / name
        if body is not None:
            p.write_text(body)
        with pytest.raises(ProbeError, match=name):
            load_suite(p, vocab_size=vocab)
