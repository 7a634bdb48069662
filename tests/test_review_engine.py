"""Engine runtime fixes found in review: resource release, budget arithmetic, prefetch cancel."""

from __future__ import annotations

import os
from collections.abc import Callable

from engine.config import EngineConfig
from engine.runtime import Engine
from engine.store import Store

PROMPT = [5, 9, 17, 33, 65, 101, 7, 7]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_engine_close_releases_page_budget_fds(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe")
    before = _open_fds()
    cfg = EngineConfig(cache_bytes=0, io_mode="buffered", memory_budget_bytes=1 << 40)
    with Engine(store, cfg) as engine:
        assert engine.page_budget is not None
        engine.page_budget.allowance_bytes = 0  # every read is evicted: the budget opens fds
        engine.generate(PROMPT, 3)
        assert engine.page_budget.evictions > 0
    assert _open_fds() == before
