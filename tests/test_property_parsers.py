"""Property tests: every engine parser of a user file, fed random and mutated inputs, either
succeeds or raises a one-line EngineError, never another exception and never a hang.

Parsers: the store manifest (Store.open), safetensors headers, config.json (checkpoint and
store), tokenizer files, probe suite TOML and engine config TOML. Mutations start from the real
files of a tiny store/checkpoint and replace or delete one to three values anywhere in them.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.checkpoint import open_checkpoint
from engine.cli.run import load_tokenizer
from engine.config import EngineConfig
from engine.errors import EngineError
from engine.manifest import checksum
from engine.shapes import open_for_run
from engine.stheader import read_safetensors_header
from engine.store import Store
from engine.suite import load_suite
from engine.verify import verify

SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples every run: a failure here is reproducible
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, -1, 4096, 2**31, 2**63, 10**15])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["../../x.bin", "/etc/passwd", "float32", "uint32", "", "abc"])
)
json_values = st.recursive(
    scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)
toml_scalars = (
    st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
toml_values = st.recursive(
    toml_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every (key/index path) inside a JSON-like document."""
    out = []
    if isinstance(doc, dict):
        items = list(doc.items())
    elif isinstance(doc, list):
        items = list(enumerate(doc))
    else:
        return out
    for k, v in items:
        out.append((*prefix, k))
        out += _paths(v, (*prefix, k))
    return out


@st.composite
def mutated(draw: st.DrawFn, doc: Any, values: st.SearchStrategy[Any] = json_values) -> Any:
    """`doc` (deep-copied) with 1-3 values replaced by random ones or deleted."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        if draw(st.booleans()) or not isinstance(parent, dict):
            parent[path[-1]] = draw(values)
        else:
            del parent[path[-1]]
    return doc


def _one_line(e: EngineError) -> None:
    assert len(" ".join(str(e).split())) > 10  # the CLI prints it on one line


# ---- store manifest -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_dir(packed_store: Callable[..., Store], tmp_path_factory: pytest.TempPathFactory):
    src = packed_store("qwen3_moe")
    dst = tmp_path_factory.mktemp("prop") / "store"
    shutil.copytree(src.root, dst)
    return dst, json.loads((src.root / "manifest.json").read_text())


def _open_and_verify(root: Path) -> None:
    try:
        Store.open(root)
    except EngineError as e:
        _one_line(e)
    report = verify(root, progress=False)  # never raises: problems are listed
    assert all("\n" not in p for p in report.problems)


@SETTINGS
@given(data=st.data())
def test_mutated_manifest(store_dir, data: st.DataObject) -> None:
    root, manifest = store_dir
    (root / "manifest.json").write_text(json.dumps(data.draw(mutated(manifest))))
    _open_and_verify(root)


@SETTINGS
@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_random_manifest(store_dir, raw: bytes) -> None:
    root, _ = store_dir
    (root / "manifest.json").write_bytes(raw)
    _open_and_verify(root)


# ---- safetensors header ---------------------------------------------------------------------


def _write_st(path: Path, header_bytes: bytes, data: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(header_bytes)) + header_bytes + data)


@SETTINGS
@given(data=st.data())
def test_mutated_safetensors_header(tmp_path_factory, data: st.DataObject) -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [16, 24]},
    }
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    _write_st(path, json.dumps(data.draw(mutated(header))).encode(), b"\0" * 24)
    try:
        read_safetensors_header(path)
    except EngineError as e:
        _one_line(e)


@SETTINGS
@given(raw=st.binary(max_size=64), declared=st.integers(0, 2**64 - 1) | st.integers(0, 80))
def test_random_safetensors_bytes(tmp_path_factory, raw: bytes, declared: int) -> None:
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(struct.pack("<Q", declared) + raw)
    try:
        read_safetensors_header(path)
    except EngineError as e:
        _one_line(e)


# ---- config.json ----------------------------------------------------------------------------

CONFIG_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_experts",
    "num_experts_per_tok",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "moe_intermediate_size",
    "model_type",
    "quantization",
    "rope_theta",
    "max_position_embeddings",
    "tie_word_embeddings",
    "rms_norm_eps",
)


@st.composite
def config_edits(draw: st.DrawFn, config: dict[str, Any]) -> dict[str, Any]:
    """The config with 1-3 of its model-shaping keys set to random values or removed."""
    cfg = dict(config)
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), min_size=1, max_size=3)):
        if draw(st.booleans()):
            cfg[key] = draw(
                st.integers(-2, 16)
                | st.sampled_from([2**31, 10**6, 1e12, "x", [1], None])
                | json_values
            )
        else:
            cfg.pop(key, None)
    return cfg


@pytest.fixture(scope="module")
def ckpt_dir(tiny_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory):
    dst = tmp_path_factory.mktemp("propck") / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen3_moe"), dst)
    return dst, json.loads((dst / "config.json").read_text())


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_checkpoint_config_json(ckpt_dir, data: st.DataObject) -> None:
    root, config = ckpt_dir
    (root / "config.json").write_text(json.dumps(data.draw(config_edits(config))))
    try:
        open_checkpoint(root)
    except EngineError as e:
        _one_line(e)


def _set_dense(root: Path, name: str, raw: bytes) -> None:
    """Replace a dense file and record it in the manifest, as a store packed with it would."""
    (root / "dense" / name).write_bytes(raw)
    m = json.loads((root / "manifest.json").read_text())
    m["dense"][name] = {"size": len(raw), "checksum": checksum(raw)}
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def dense_store(packed_store: Callable[..., Store], tmp_path_factory: pytest.TempPathFactory):
    src = packed_store("qwen3_moe")
    dst = tmp_path_factory.mktemp("propdense") / "store"
    shutil.copytree(src.root, dst)
    return dst, json.loads((src.dense_dir / "config.json").read_text())


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_store_config_json(dense_store, data: st.DataObject) -> None:
    root, config = dense_store
    raw = json.dumps(data.draw(config_edits(config))).encode()
    if data.draw(st.booleans()):
        raw = data.draw(st.binary(max_size=100))
    _set_dense(root, "config.json", raw)
    try:
        open_for_run(root)
    except EngineError as e:
        _one_line(e)


# ---- tokenizer files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok_store(packed_store: Callable[..., Store], tmp_path_factory: pytest.TempPathFactory):
    src = packed_store("qwen3_moe")
    dst = tmp_path_factory.mktemp("proptok") / "store"
    shutil.copytree(src.root, dst)
    return dst, json.loads((src.dense_dir / "tokenizer.json").read_text())


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_tokenizer_files(tok_store, data: st.DataObject) -> None:
    root, orig = tok_store
    small = {k: orig[k] for k in ("version", "model", "pre_tokenizer") if k in orig}
    small["model"] = {"type": "WordLevel", "vocab": {"<s>": 0, "w1": 1}, "unk_token": "<s>"}
    choice = data.draw(st.sampled_from(["mutated", "bytes"]))
    if choice == "mutated":
        raw = json.dumps(data.draw(mutated(small))).encode()
    else:
        raw = data.draw(st.binary(max_size=100))
    _set_dense(root, "tokenizer.json", raw)
    try:
        tok = load_tokenizer(Store.open(root))
    except EngineError as e:
        _one_line(e)
        return
    assert hasattr(tok, "encode")


# ---- probe suite and engine config TOML -----------------------------------------------------

SUITE = {
    "name": "s",
    "seed": 0,
    "warmup_tokens": 2,
    "prompts": [{"ids": [1, 2, 3], "decode_tokens": 4}, {"text": "w1 w2", "decode_tokens": 3}],
    "generated": {"prompts": 2, "prompt_tokens": 4, "decode_tokens": 4},
}


class _Tok:
    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) if w[1:].isdigit() else 0 for w in text.split()]


def _toml_or_skip(doc: Any) -> bytes:
    try:
        return tomli_w.dumps(doc).encode()
    except (TypeError, ValueError):
        assume(False)
        raise


@SETTINGS
@given(data=st.data(), with_tok=st.booleans())
def test_probe_suite_toml(tmp_path_factory, data: st.DataObject, with_tok: bool) -> None:
    path = tmp_path_factory.mktemp("suite") / "s.toml"
    if data.draw(st.booleans()):
        raw = _toml_or_skip(data.draw(mutated(SUITE, toml_values)))
    else:
        raw = data.draw(st.binary(max_size=120))
    path.write_bytes(raw)
    try:
        suite = load_suite(path, vocab_size=512, tokenizer=_Tok() if with_tok else None)
    except EngineError as e:
        _one_line(e)
        return
    assert suite.prompts and all(0 <= t < 512 for p in suite.prompts for t in p.ids)


CONFIG = {
    "engine": {
        "cache_bytes": 1 << 20,
        "io_mode": "mmap",
        "io_threads": 2,
        "prefetch": "none",
        "quant_bits": 4,
        "pinned_fraction": 0.5,
        "experts_per_token": 2,
    },
    "provenance": {"store_fingerprint": "ab", "metrics": {"decode_tok_s": 1.0}},
}


@SETTINGS
@given(data=st.data())
def test_engine_config_toml(tmp_path_factory, data: st.DataObject) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    if data.draw(st.booleans()):
        doc = data.draw(mutated(CONFIG, toml_values))
        if data.draw(st.booleans()):
            doc[data.draw(st.text(max_size=8))] = data.draw(toml_values)
        raw = _toml_or_skip(doc)
    else:
        raw = data.draw(st.binary(max_size=120))
    path.write_bytes(raw)
    try:
        EngineConfig.from_toml(path)
    except EngineError as e:
        _one_line(e)
