"""Engine runtime fixes found in review: resource release, budget arithmetic, prefetch cancel."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest

from engine.config import EngineConfig
from engine.runtime import Engine
from engine.store import Store

PROMPT = [5, 9, 17, 33, 65, 101, 7, 7]


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
        working = probe_engine.entry_bytes * probe_engine.top_k
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
