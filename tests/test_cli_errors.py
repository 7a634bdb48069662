"""Inputs a new user gets wrong, each of which used to end in a traceback (or ran silently on
defaults): every one is now a one-line `error: ...` naming the file, key or flag, exit 1."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import EngineConfig
from engine.errors import CheckpointError, ConfigError, ProbeError, StoreError
from engine.manifest import checksum
from engine.pack import pack
from engine.stheader import read_safetensors_header
from engine.store import Store
from engine.suite import load_suite
from engine.synth.hf import synthesize
from engine.tmpdirs import clean_stale


def _one_line_error(capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def store(packed_store: Callable[..., Store]) -> Store:
    return packed_store("qwen3_moe")


# ---- run ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--prompt", ""], "encodes to no tokens"),
        (["--prompt", "\udcff"], "not valid UTF-8"),  # what argv gives for the byte 0xff
        (["--prompt-ids", "1", "--max-tokens", "1000000000"], "exceeds the model's context"),
        (["--prompt-ids", "1", "--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--prompt-ids", "99999"], "outside the vocabulary 0..511"),
        (["--prompt-ids", "1,x"], "comma-separated integers"),
    ],
)
def test_run_bad_prompts_and_lengths(store: Store, argv: list[str], needle: str, capsys) -> None:
    assert main(["run", str(store.root), *argv]) == 1
    _one_line_error(capsys, needle)


def _rewrite_dense(root: Path, name: str, data: bytes) -> None:
    """Change a dense file and keep the manifest consistent (a store packed that way)."""
    (root / "dense" / name).write_bytes(data)
    m = json.loads((root / "manifest.json").read_text())
    m["dense"][name] = {"size": len(data), "checksum": checksum(data)}
    (root / "manifest.json").write_text(json.dumps(m))


def test_run_corrupt_tokenizer(store: Store, tmp_path: Path, capsys) -> None:
    root = shutil.copytree(store.root, tmp_path / "s")
    _rewrite_dense(root, "tokenizer.json", b'{"model": 3, "truncated')
    assert main(["run", str(root), "--prompt", "w2 w3"]) == 1
    _one_line_error(capsys, "the tokenizer does not load")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c.update(vocab_size=10**12), "'vocab_size' = 1000000000000 is too large"),
        (lambda c: c.update(vocab_size=1e12), "'vocab_size' must be a positive integer"),
        (lambda c: c.update(quantization={"bits": "x"}), "key 'quantization' needs integer"),
    ],
)
def test_run_with_a_bad_dense_config(store: Store, tmp_path: Path, edit, needle, capsys) -> None:
    root = shutil.copytree(store.root, tmp_path / "s")
    cfg = json.loads((root / "dense" / "config.json").read_text())
    edit(cfg)
    _rewrite_dense(root, "config.json", json.dumps(cfg).encode())
    assert main(["run", str(root), "--prompt-ids", "1", "--max-tokens", "1"]) == 1
    _one_line_error(capsys, needle)


def test_bench_source_that_does_not_exist(store: Store, capsys) -> None:
    assert main(["bench", str(store.root), "--source", "/nope"]) == 1
    _one_line_error(capsys, "--source /nope")


def test_probe_trace_into_a_missing_folder(store: Store, tmp_path: Path, capsys) -> None:
    trace = tmp_path / "missing" / "t.npz"
    assert main(["probe", str(store.root), "--no-quality", "--trace", str(trace)]) == 1
    _one_line_error(capsys, "does not exist")


# ---- config and suite TOML ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (b"[engin]\nio_mode = 'mmap'\n", "unknown table(s) [engin]"),
        (b"io_threads = 2\n[engine]\nio_mode = 'mmap'\n", "io_threads sit outside [engine]"),
        (b"\xff\xfe[engine]\n", "not UTF-8"),
        (b"[engine]\nquant_bits = 16.0\n", "quant_bits must be one of"),
        (b"[engine\n", "not valid TOML"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: bytes, needle: str) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(text)
    with pytest.raises(ConfigError) as e:
        EngineConfig.from_toml(path)
    assert needle in str(e.value) and str(path) in str(e.value)


def test_fifo_config_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="not a regular file"):
        EngineConfig.from_toml(tmp_path / "c.toml")


class _Tok:
    def encode(self, text: str) -> list[int]:
        return [int(w[1:]) for w in text.split()]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[prompts]]\ntext = ""\n', "text must be a non-empty string"),
        ("prompts = [1, 2]\n", "must be an array of tables"),
        ("seed = -1\n[[prompts]]\nids = [1]\n", "`seed` must be >= 0"),
        ("generated = 5\n", "`generated` must be a table"),
        ("[generated]\nprompts = 1000000000000\n", "`prompts` must be <= 10000"),
        ('[[prompts]]\ntext = "w9999"\n', "outside the vocabulary"),
    ],
)
def test_bad_suites(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ProbeError) as e:
        load_suite(path, vocab_size=512, tokenizer=None if "generated" in text else _Tok())
    assert needle in str(e.value)


# ---- checkpoint headers and configs (pack) ---------------------------------------------------


def _st_file(path: Path, header: object, data: bytes = b"\0" * 16) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        ([1, 2], "must be a JSON object"),
        ({"a": {"dtype": "F32", "shape": [2]}}, "data_offsets must be [begin, end]"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["abc", 8]}}, "data_offsets"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "are reversed"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "needs 12"),
        ({"a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, "past the end"),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, "unknown dtype"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            "overlap",
        ),
    ],
)
def test_bad_safetensors_headers(tmp_path: Path, header: object, needle: str) -> None:
    path = _st_file(tmp_path / "x.safetensors", header)
    with pytest.raises(CheckpointError) as e:
        read_safetensors_header(path)
    assert needle in str(e.value) and str(path) in str(e.value)


@pytest.fixture
def ckpt(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint("qwen3_moe"), tmp_path / "ckpt"))


def test_pack_refuses_overlapping_tensors(ckpt: Path, tmp_path: Path, capsys) -> None:
    shard = sorted(ckpt.glob("*.safetensors"))[0]
    header, start, raw = read_safetensors_header(shard)
    size = {
        k: v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if k != "__metadata__"
    }
    # Two tensors of one size: pointing b at a's bytes makes the overlap the only thing wrong.
    a, b = next((a, b) for a in size for b in size if a < b and size[a] == size[b])
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    new = json.dumps(header, separators=(",", ":")).encode()
    new += b" " * (len(raw) - len(new))
    assert len(new) == len(raw)
    data = shard.read_bytes()
    shard.write_bytes(data[:8] + new + data[start:])
    assert main(["pack", str(ckpt), str(tmp_path / "s")]) == 1
    _one_line_error(capsys, "overlap")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"vocab_size": 10**12}, "is too large"),
        ({"quantization": {"bits": "x"}}, "key 'quantization' needs integer"),
    ],
)
def test_pack_bad_config_values(ckpt: Path, tmp_path: Path, change, needle, capsys) -> None:
    cfg = json.loads((ckpt / "config.json").read_text()) | change
    (ckpt / "config.json").write_text(json.dumps(cfg))
    assert main(["pack", str(ckpt), str(tmp_path / "s")]) == 1
    _one_line_error(capsys, needle)


# ---- synth / pack outputs -------------------------------------------------------------------


def test_synth_negative_seed(tmp_path: Path, capsys) -> None:
    assert main(["synth", str(tmp_path / "m"), "--family", "qwen3_moe", "--seed", "-1"]) == 1
    _one_line_error(capsys, "seed must be an integer")


def test_out_under_an_existing_file(ckpt: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "file").write_text("x")
    assert main(["synth", str(tmp_path / "file" / "m"), "--family", "qwen3_moe"]) == 1
    _one_line_error(capsys, "cannot create it")
    assert main(["pack", str(ckpt), str(tmp_path / "file" / "s")]) == 1
    _one_line_error(capsys, "cannot create it")
    assert main(["pack", str(tmp_path / "file"), str(tmp_path / "s")]) == 1
    _one_line_error(capsys, "is not a directory")


def test_synth_disk_full_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import engine.synth.write

    def full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.synth.write.os, "pwrite", full)  # synth's shard writer
    with pytest.raises(CheckpointError, match="free disk space"):
        synthesize(tmp_path / "m", family="qwen3_moe")
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_kill_9_leftovers_are_cleaned_by_the_next_run(ckpt: Path, tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getppid()  # our parent outlives this test
    stale = [tmp_path / f".m.{dead}-abc123", tmp_path / f"s.tmp-{dead}-xyz789"]
    keep = [tmp_path / f".m.{live}-abc123", tmp_path / f"s.tmp-{live}-xyz789"]
    for d in stale + keep:
        (d / "sub").mkdir(parents=True)
    synthesize(tmp_path / "m", family="qwen3_moe")
    assert not stale[0].exists() and keep[0].exists()
    pack(ckpt, tmp_path / "s", progress=False)
    assert not stale[1].exists() and keep[1].exists()
    assert clean_stale(tmp_path, "s.tmp-") == []  # a live writer's folder is never removed


def test_store_errors_are_engine_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such store directory"):
        Store.open(tmp_path / "none")
