"""Engine wiring: failures end with clear errors (never a hang), budgets, the run command."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import pagecache
from engine.cli import main
from engine.config import EngineConfig
from engine.errors import ConfigError, MemoryBudgetError, ReadError
from engine.runtime import Engine
from engine.store import Store
from engine.tokenizer import TOKENIZER_FILES

PROMPT = [5, 9, 17, 33, 65, 101, 7, 7]
ROOT = Path(__file__).resolve().parents[1]


def _copy(store: Store, dst: Path) -> Store:
    shutil.copytree(store.root, dst)
    return Store.open(dst)


def _run_with_deadline(fn: Callable[[], object], seconds: float = 60) -> BaseException | None:
    """Run fn in a thread; fail the test if it does not finish (a hang), return what it raised."""
    box: list[BaseException | None] = [None]

    def target() -> None:
        try:
            fn()
        except BaseException as e:  # handed back to the test
            box[0] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "engine hung instead of failing"
    return box[0]


@pytest.mark.parametrize("prefetch", ["none", "next_layer"])
@pytest.mark.parametrize("io_mode", ["buffered", "direct", "mmap"])
def test_truncated_layer_file_fails_clearly_without_hanging(
    packed_store: Callable[..., Store], tmp_path: Path, io_mode: str, prefetch: str
) -> None:
    store = _copy(packed_store("qwen3_moe"), tmp_path / "s")
    victim = store.root / store.layers[-1].file
    victim.write_bytes(victim.read_bytes()[: store.expert_span])  # only expert slot 0 survives
    cfg = EngineConfig(
        cache_bytes=0, io_mode=io_mode, prefetch=prefetch, io_threads=2, read_chunk_bytes=8192
    )

    def go() -> None:
        with Engine(store, cfg) as engine:
            engine.generate(PROMPT, 4)

    err = _run_with_deadline(go)
    assert isinstance(err, ReadError)
    assert f"layer {store.layers[-1].layer}" in str(err) and str(victim) in str(err)


def test_memory_budget_below_minimum_is_refused(packed_store: Callable[..., Store]) -> None:
    with pytest.raises(MemoryBudgetError, match="memory_budget_bytes"):
        Engine(packed_store("qwen3_moe"), EngineConfig(memory_budget_bytes=1 << 20))


def test_memory_budget_shrinks_the_cache_and_bounds_page_cache(
    packed_store: Callable[..., Store],
) -> None:
    if not pagecache.SUPPORTED:
        pytest.skip(pagecache.UNSUPPORTED_NOTE)
    (ROOT / "build").mkdir(exist_ok=True)
    # pytest's tmp dir may be tmpfs, where file pages cannot be evicted; use the real disk.
    dst = ROOT / "build" / f"budget-store-{threading.get_ident()}"
    shutil.rmtree(dst, ignore_errors=True)
    store = _copy(packed_store("qwen3_moe"), dst)
    try:
        files = [store.root / le.file for le in store.layers]
        pagecache.evict_all(files)
        if pagecache.resident_bytes_many(files) > store.expert_span * len(files):
            pytest.skip(f"{dst}: filesystem keeps pages after FADV_DONTNEED")
        with Engine(store, EngineConfig(cache_bytes=0)) as probe_engine:
            base = probe_engine.working_bytes
        from engine.procstats import current_rss
        from engine.runtime import runtime_reserve

        reserve = runtime_reserve(int(store.config["vocab_size"]))
        budget = current_rss() + base + reserve + 6 * store.expert_span
        cfg = EngineConfig(cache_bytes=1 << 40, io_mode="buffered", memory_budget_bytes=budget)
        with Engine(store, cfg) as engine:
            assert engine.cache_bytes < budget  # the cache was shrunk to fit
            engine.generate(PROMPT, 6)
            assert engine.page_budget is not None
            allowance = engine.page_budget.allowance_bytes
            resident = pagecache.resident_bytes_many(files)
        assert resident <= allowance + store.expert_span
    finally:
        shutil.rmtree(dst, ignore_errors=True)


def test_variant_knobs_must_match_the_store(packed_store: Callable[..., Store]) -> None:
    with pytest.raises(ConfigError, match="quant_bits = 4"):
        Engine(packed_store("qwen3_moe"), EngineConfig(quant_bits=4))
    with pytest.raises(ConfigError, match="experts_per_token"):
        Engine(packed_store("qwen3_moe"), EngineConfig(experts_per_token=999))


def test_pinned_policy_pins_the_profiles_hottest_experts(
    packed_store: Callable[..., Store], tmp_path: Path
) -> None:
    store = packed_store("qwen3_moe")
    profile = store.profile()
    assert profile is not None  # pack calibrates models that fit in RAM
    ranked = sorted(
        ((c, layer, e) for layer, cs in profile.items() for e, c in enumerate(cs)), reverse=True
    )
    routed: set[tuple[int, int]] = set()

    class Routes:  # the provider's tracer hook: every expert a layer step routes to
        def on_fetch(self, layer: int, experts: list[int], _x: object) -> None:
            routed.update((layer, e) for e in experts)

    with Engine(store, EngineConfig(cache_bytes=0)) as sizing:
        entry = sizing.entry_bytes
    # 8 experts of cache, half pinned: the profile's 4 hottest, LRU churn through the rest.
    cfg = EngineConfig(cache_policy="pinned", pinned_fraction=0.5, cache_bytes=8 * entry)
    with Engine(store, cfg) as engine:
        engine.provider.tracer = Routes()
        engine.generate(PROMPT, 12)
        hot = {(layer, e) for _, layer, e in ranked[:4]}
        assert hot & routed, "the prompt should route to some of the profile's hottest experts"
        assert all(k in engine.cache for k in hot & routed)  # loaded once, never evicted
        cold = routed - {(layer, e) for _, layer, e in ranked[:8]}
        assert sum(k in engine.cache for k in cold) <= 4  # the rest share the other half
    bare = _copy(store, tmp_path / "noprof")
    (bare.root / "profile.json").unlink()
    with pytest.raises(ConfigError, match="profile"):
        Engine(bare, EngineConfig(cache_policy="pinned"))


def test_run_cli_json(packed_store: Callable[..., Store], capsys: pytest.CaptureFixture) -> None:
    store = packed_store("qwen3_moe")
    assert (
        main(["run", str(store.root), "--prompt-ids", "1,2,3", "--max-tokens", "5", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["tokens"]) == 5
    for key in ("decode_tok_s", "cache_hit_rate", "bytes_read", "memory_bytes", "peak_rss_bytes"):
        assert key in out
    assert 0.0 <= out["cache_hit_rate"] <= 1.0
    assert out["memory_bytes"] >= out["peak_rss_bytes"]


def test_run_cli_text_and_config(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = packed_store("qwen3_moe")
    cfg = tmp_path / "c.toml"
    EngineConfig(cache_bytes=0, prefetch="next_layer").to_toml(cfg)
    assert (
        main(
            [
                "run",
                str(store.root),
                "--config",
                str(cfg),
                "--prompt-ids",
                "4,5",
                "--max-tokens",
                "3",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines[0].split()) == 3 and "tok/s" in lines[1] and "hit rate 0.0%" in lines[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prompt-ids", "1,x"], "comma-separated integers"),
        (["--prompt-ids", "1,999999"], "outside the vocabulary"),
        (["--prompt-ids", "1", "--max-tokens", "0"], "--max-tokens"),
    ],
)
def test_run_cli_bad_input(
    packed_store: Callable[..., Store],
    capsys: pytest.CaptureFixture,
    argv: list[str],
    message: str,
) -> None:
    assert main(["run", str(packed_store("qwen3_moe").root), *argv]) == 1
    assert message in capsys.readouterr().err


def test_run_cli_text_prompt_needs_a_tokenizer(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = packed_store("qwen3_moe")
    assert main(["run", str(store.root), "--prompt", "w1 w2 w3", "--max-tokens", "4"]) == 0
    text = capsys.readouterr().out.splitlines()[0]
    assert text.split() and all(w.startswith("w") for w in text.split())  # synth's word vocab
    bare = _copy(store, tmp_path / "bare")
    for f in TOKENIZER_FILES:
        (bare.dense_dir / f).unlink(missing_ok=True)
    assert main(["run", str(bare.root), "--prompt", "hello"]) == 1
    assert "no tokenizer" in capsys.readouterr().err


def test_run_cli_missing_store_and_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["run", str(tmp_path / "nope"), "--prompt-ids", "1"]) == 1
    assert "no such store" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nio_mode = 'floppy'\n")
    with pytest.raises(ConfigError, match="io_mode"):
        EngineConfig.from_toml(bad)


def test_tuned_file_for_another_store_is_refused_without_force(
    packed_store: Callable[..., Store], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    store = packed_store("qwen3_moe")
    tuned = tmp_path / "tuned.toml"
    EngineConfig().to_toml(tuned, {"provenance": {"store_fingerprint": "0" * 64}})
    argv = [
        "run",
        str(store.root),
        "--config",
        str(tuned),
        "--prompt-ids",
        "1",
        "--max-tokens",
        "2",
    ]
    assert main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert "warning" in capsys.readouterr().err


def test_a_relative_budget_is_the_same_bytes_for_every_variant_of_a_model(
    packed_store: Callable[..., Store],
) -> None:
    """expert_memory_fraction counts experts at the source checkpoint's precision: the 4-bit
    variant gets the 16-bit model's budget (not 30% of its own, smaller experts) and so holds
    more experts in it."""
    b16, b4 = packed_store("qwen3_moe"), packed_store("qwen3_moe", bits=4)
    params = sum(math.prod(t.shape) for t in b16.expert_tensors if t.name.endswith(".weight"))
    assert b16.source_expert_nbytes == b4.source_expert_nbytes == 2 * params
    cfg = EngineConfig(cache_bytes=1 << 40, expert_memory_fraction=0.3)
    held = {}
    for store in (b16, b4):
        with Engine(store, cfg) as engine:
            assert engine.memory_budget is not None
            held[store.bits] = (engine.memory_budget, engine.cache_bytes // engine.entry_bytes)
    (budget16, slots16), (budget4, slots4) = held[16], held[4]
    assert abs(budget16 - budget4) <= 0.03 * budget16, held
    assert slots4 >= 2 * max(slots16, 1), held


# ---- resources and budget arithmetic ------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_engine_close_releases_page_budget_fds(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe")
    gc.collect()  # an earlier test's garbage closing its fds mid-test would skew the count
    before = _open_fds()
    cfg = EngineConfig(cache_bytes=0, io_mode="buffered", memory_budget_bytes=1 << 40)
    with Engine(store, cfg) as engine:
        assert engine.page_budget is not None
        engine.page_budget.allowance_bytes = 0  # every read is evicted: the budget opens fds
        engine.generate(PROMPT, 3)
        assert engine.page_budget.evictions > 0
    assert _open_fds() == before


def test_budget_split_never_exceeds_the_budget(
    packed_store: Callable[..., Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.runtime as runtime

    store = packed_store("qwen3_moe")
    base = 200 << 20
    monkeypatch.setattr(runtime, "current_rss", lambda: base)
    with Engine(store, EngineConfig(cache_bytes=0)) as probe_engine:
        working = probe_engine.working_bytes
    for extra in (0, store.expert_span // 2, 3 * store.expert_span):
        reserve = runtime.runtime_reserve(int(store.config["vocab_size"]))
        budget = base + working + store.expert_span + reserve + extra
        cfg = EngineConfig(cache_bytes=1 << 40, io_mode="buffered", memory_budget_bytes=budget)
        with Engine(store, cfg) as engine:
            assert engine.page_budget is not None
            total = (
                base + working + reserve + engine.cache_bytes + engine.page_budget.allowance_bytes
            )
            assert total <= budget
