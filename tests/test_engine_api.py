"""engine/api.py: what callers outside the engine get, checked against the engine's own view."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import api
from engine.errors import EngineError
from engine.store import Store


def test_store_info_is_the_store_as_the_engine_opens_it(packed_store: Callable[..., Store]) -> None:
    store = packed_store("qwen3_moe", bits=4)
    info = api.store_info(store.root)
    per_expert = store.expert_nbytes
    assert info.expert_bytes == len(store.layers) * store.num_experts * per_expert > 0
    assert (info.fingerprint, info.bits, info.group_size, info.layout, info.top_k) == (
        store.fingerprint,
        4,
        64,
        "natural",
        store.top_k,
    )
    source = json.loads((store.root / "manifest.json").read_text())["source"]
    assert info.model_fingerprint == source["fingerprint"]
    # synth writes a tokenizer and pack keeps it: `engine run --prompt TEXT` works on the store
    assert (store.root / "dense" / "tokenizer.json").is_file() and info.has_tokenizer


def test_store_info_of_a_missing_store_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError):
        api.store_info(tmp_path / "nothing-here")


def test_read_toml_names_the_file_and_what_it_is(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("a = [")
    with pytest.raises(ValueError, match=rf"{bad}: not valid TOML"):
        api.read_toml(bad, "space", ValueError)
    bad.write_text("a = 1")
    assert api.read_toml(bad, "space", ValueError) == {"a": 1}


def test_compile_kernels_fills_numbas_cache_for_later_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Probes load the kernels from numba's on-disk cache instead of each compiling them (a
    compiling process holds ~160 MB more RSS, which a relative budget would count)."""
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert api.compile_kernels()
    assert list(tmp_path.rglob("*.nbi")), "no numba cache index written"
