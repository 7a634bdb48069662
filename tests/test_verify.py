"""verify: a good store passes; a flipped byte or a truncated layer file is named and the CLI
exits 1 (CLI run in-process)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import cli
from engine.store import Store
from engine.verify import verify


@pytest.fixture
def store_copy(packed_store: Callable[..., Store], tmp_path: Path) -> Store:
    """A private copy of a 4-bit qwen3_moe store, free to corrupt."""
    src = packed_store("qwen3_moe", bits=4)
    return Store.open(shutil.copytree(src.root, tmp_path / "store"))


def test_good_store_is_ok(store_copy: Store, capsys: pytest.CaptureFixture[str]) -> None:
    report = verify(store_copy.root, progress=False)
    assert report.ok, report.problems
    assert report.experts_checked == len(store_copy.layers) * store_copy.num_experts
    assert cli.main(["verify", str(store_copy.root)]) == 0
    assert "status: ok" in capsys.readouterr().out


def test_flipped_byte_names_layer_and_expert(
    store_copy: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    layer, expert = store_copy.layers[1].layer, 9
    loc = store_copy.expert(layer, expert)
    path = store_copy.layer_file(layer)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.nbytes // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify(store_copy.root, progress=False)
    assert not report.ok
    assert len(report.problems) == 1
    assert f"layer {layer} expert {expert}: checksum mismatch" in report.problems[0]
    assert cli.main(["verify", str(store_copy.root)]) == 1
    assert f"layer {layer} expert {expert}: checksum mismatch" in capsys.readouterr().out


def test_truncated_layer_file_names_file_and_first_expert(
    store_copy: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = store_copy.layers[2]
    path = store_copy.root / entry.file
    cut_pos = 5  # keep the first five experts on disk, cut into the sixth
    cut = entry.experts[entry.order[cut_pos]].offset + 100
    with open(path, "r+b") as f:
        f.truncate(cut)
    report = verify(store_copy.root, progress=False)
    assert not report.ok
    msg = report.problems[0]
    assert entry.file in msg and f"first expert affected: {entry.order[cut_pos]}" in msg
    assert report.experts_checked == (len(store_copy.layers) - 1) * 16 + cut_pos
    assert cli.main(["verify", str(store_copy.root)]) == 1
    assert entry.file in capsys.readouterr().out


def test_missing_pieces(store_copy: Store) -> None:
    (store_copy.dense_dir / "model.safetensors").unlink()
    (store_copy.root / store_copy.layers[0].file).unlink()
    problems = verify(store_copy.root, progress=False).problems
    assert any("dense/model.safetensors is missing" in p for p in problems)
    assert any(f"layer {store_copy.layers[0].layer}:" in p and "missing" in p for p in problems)


def test_bad_manifest(store_copy: Store, tmp_path: Path) -> None:
    manifest = store_copy.root / "manifest.json"
    m = json.loads(manifest.read_text())
    m["layers"][0]["experts"][3]["offset"] += 1
    manifest.write_text(json.dumps(m))
    assert any(
        "expert 3: offset" in p and "not 4096-aligned" in p
        for p in verify(store_copy.root).problems
    )
    manifest.write_text("{")
    assert not verify(store_copy.root, progress=False).ok
    assert cli.main(["verify", str(tmp_path / "nowhere")]) == 1
