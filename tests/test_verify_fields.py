"""verify checks every manifest field and every byte: each lie below (all passed `verify`
before) is named, and the ones `run` would trip on are refused by `Store.open` too."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.errors import StoreCorrupt
from engine.store import Store
from engine.verify import verify


@pytest.fixture
def root(packed_store: Callable[..., Store], tmp_path: Path) -> Path:
    return shutil.copytree(packed_store("qwen3_moe").root, tmp_path / "store")


def _edit(root: Path, fn: Callable[[dict[str, Any]], object]) -> None:
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def _problems(root: Path) -> str:
    report = verify(root, progress=False)
    assert not report.ok
    return "\n".join(report.problems)


def _tensor(m: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in m["expert_tensors"] if t["name"] == name)


LIES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "offset moved": (
        lambda m: m["layers"][0]["experts"][2].update(offset=6291456),
        "layer 0 expert 2: bytes 6291456",
    ),
    "nbytes 1e15": (
        lambda m: m["layers"][1]["experts"][0].update(nbytes=10**15),
        "layer 1 expert 0: nbytes 1000000000000000",
    ),
    "experts overlap": (
        lambda m: m["layers"][0]["experts"][1].update(
            offset=m["layers"][0]["experts"][0]["offset"]
        ),
        "layer 0: experts 0 and 1 overlap",
    ),
    "tensor shape lies": (
        lambda m: _tensor(m, "up_proj.weight").update(shape=[64, 256]),
        "expert tensor up_proj.weight is [64, 256]",
    ),
    "tensor dtype lies": (
        lambda m: _tensor(m, "gate_proj.weight").update(dtype="float32"),
        "gate_proj.weight: nbytes",
    ),
    "tensor offset lies": (
        lambda m: _tensor(m, "down_proj.weight").update(offset=0),
        "overlap",
    ),
    "4 bits on a 16-bit store": (
        lambda m: m["quant"].update(bits=4, group_size=64),
        "quant.bits is 4 but gate_proj has no uint32 weight",
    ),
    "order not a permutation": (
        lambda m: m["layers"][2].update(order=[0] * 16),
        "order is not a permutation",
    ),
    "experts missing": (
        lambda m: m["layers"][2].update(experts=m["layers"][2]["experts"][:3]),
        "has 3 experts, num_experts is 16",
    ),
    "dense file not listed": (
        lambda m: m["dense"].pop("model.safetensors"),
        "dense file model.safetensors is not listed",
    ),
    "dense path escapes": (
        lambda m: m["dense"].update({"../manifest.json": {"size": 1, "checksum": "0"}}),
        "not a plain file name",
    ),
}


@pytest.mark.parametrize("lie", LIES)
def test_lying_manifest_is_named_by_verify_and_refused_by_run(
    root: Path, lie: str, capsys: pytest.CaptureFixture[str]
) -> None:
    edit, expected = LIES[lie]
    _edit(root, edit)
    assert expected in _problems(root)
    if lie != "tensor shape lies":  # consistent on its own: only the model config reveals it
        with pytest.raises(StoreCorrupt):
            Store.open(root)
    assert main(["run", str(root), "--prompt-ids", "1,2", "--max-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda m: m.update(align=0), "key 'align' must be an integer in [1"),
        (lambda m: m["layers"][0]["experts"][0].update(offset=-4096), "experts[0].offset"),
        (lambda m: m["layers"][0].update(file_size=-1), "layers[0].file_size"),
        (lambda m: m["quant"].update(bits="x"), "key 'quant.bits'"),
        (lambda m: m.pop("layers"), "key 'layers' is missing"),
        (lambda m: m.update(expert_tensors={}), "key 'expert_tensors' must be a list"),
    ],
)
def test_malformed_fields_are_one_line_errors(
    root: Path, edit: Callable[[dict[str, Any]], object], expected: str, capsys
) -> None:
    _edit(root, edit)
    with pytest.raises(StoreCorrupt, match="re-pack") as e:
        Store.open(root)
    assert expected in str(e.value)
    assert expected in _problems(root)
    assert main(["run", str(root), "--prompt-ids", "1", "--max-tokens", "1"]) == 1
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"\xff\xfe{}", "not UTF-8"), (b"[1, 2]", "must be a JSON object"), (b"{", "not valid JSON")],
)
def test_manifest_not_an_object(root: Path, raw: bytes, expected: str) -> None:
    (root / "manifest.json").write_bytes(raw)
    assert expected in _problems(root)


def test_flipped_dense_byte_is_named(root: Path) -> None:
    path = root / "dense" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x40
    path.write_bytes(bytes(data))
    assert "dense/model.safetensors checksum mismatch" in _problems(root)


def test_truncated_dense_weights_refused_by_open_and_run(root: Path, capsys) -> None:
    path = root / "dense" / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)
    assert "dense/model.safetensors is" in _problems(root)
    assert main(["run", str(root), "--prompt-ids", "1", "--max-tokens", "1"]) == 1
    assert "dense/model.safetensors is" in capsys.readouterr().err
    (root / "dense" / "config.json").unlink()
    assert main(["run", str(root), "--prompt-ids", "1", "--max-tokens", "1"]) == 1
    assert "dense/config.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not a routing profile"),
        ('{"counts": {"0": [1, 2]}}', "covers layers [0]"),
        ('{"counts": [1]}', "not a routing profile"),
    ],
)
def test_corrupt_profile_is_named(root: Path, text: str, expected: str) -> None:
    (root / "profile.json").write_text(text)
    assert expected in _problems(root)
    with pytest.raises(StoreCorrupt, match=expected.replace("[", r"\[")):
        Store.open(root).profile()


def test_profile_with_wrong_count_is_named(root: Path) -> None:
    prof = json.loads((root / "profile.json").read_text())
    prof["counts"]["1"] = prof["counts"]["1"][:-1]
    (root / "profile.json").write_text(json.dumps(prof))
    assert "layer 1 needs 16 non-negative integer counts" in _problems(root)


def test_fifo_dense_file_does_not_hang_verify(root: Path) -> None:
    (root / "dense" / "tokenizer.json").unlink()
    os.mkfifo(root / "dense" / "tokenizer.json")
    assert "dense/tokenizer.json is not a regular file" in _problems(root)
    with pytest.raises(StoreCorrupt, match="not a regular file"):
        Store.open(root)


def test_config_that_does_not_fit_the_experts(root: Path) -> None:
    cfg = json.loads((root / "dense" / "config.json").read_text())
    cfg["moe_intermediate_size"] = 256
    raw = json.dumps(cfg).encode()
    (root / "dense" / "config.json").write_bytes(raw)
    # Keep size and checksum consistent: this is a store packed with a lying config.
    from engine.manifest import checksum

    entry = {"size": len(raw), "checksum": checksum(raw)}
    _edit(root, lambda m: m["dense"].update({"config.json": entry}))
    assert "the model at 16 bits needs [256, 128]" in _problems(root)
