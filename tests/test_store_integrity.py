"""Hostile stores at read time: corrupt expert bytes, old formats, paths leaving the store, FIFOs
and files truncated under a running reader all end in one-line engine errors, never in garbage
output, a hang or a SIGBUS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import ExpertCorrupt, ReadError, StoreCorrupt, StoreError
from engine.reader import ExpertReader
from engine.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(packed_store: Callable[..., Store]) -> Iterator[Store]:
    """A private copy of the 16-bit qwen3_moe store, on the repo's disk (O_DIRECT works there)."""
    (ROOT / "build").mkdir(exist_ok=True)
    dst = Path(tempfile.mkdtemp(prefix="integrity-", dir=ROOT / "build")) / "store"
    shutil.copytree(packed_store("qwen3_moe").root, dst)
    yield Store.open(dst)
    shutil.rmtree(dst.parent, ignore_errors=True)


def _flip(store: Store, layer: int, expert: int) -> None:
    loc = store.expert(layer, expert)
    with open(store.layer_file(layer), "r+b") as f:
        f.seek(loc.offset + loc.nbytes // 3)
        b = f.read(1)
        f.seek(loc.offset + loc.nbytes // 3)
        f.write(bytes([b[0] ^ 0x10]))


def _edit_manifest(root: Path, fn: Callable[[dict], object]) -> None:
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("mode", ["buffered", "mmap", "direct"])
def test_corrupt_expert_never_reaches_the_math(store: Store, mode: str) -> None:
    layer = store.layers[1].layer
    _flip(store, layer, 5)
    with ExpertReader(store, mode, read_chunk_bytes=8192, io_threads=3) as r:
        try:
            r.submit(layer, 4).result()  # a clean neighbour still reads
        except ReadError as e:
            if "O_DIRECT" in str(e):
                pytest.skip(str(e))
            raise
        with pytest.raises(ExpertCorrupt, match=f"layer {layer} expert 5 is corrupt") as e:
            r.submit(layer, 5).result()
        assert str(store.root) in str(e.value) and "verify" in str(e.value)
        with pytest.raises(ExpertCorrupt, match=f"layer {layer} expert 5"):
            r.submit(layer, 5).result(timeout=30)  # the background (prefetch) path too


def test_run_with_corrupt_experts_exits_1_naming_them(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    first = store.layers[0].layer
    for e in range(store.num_experts):
        _flip(store, first, e)
    assert main(["run", str(store.root), "--prompt-ids", "1,2,3", "--max-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: store ") and f"layer {first} expert" in err
    assert "is corrupt" in err and len(err.strip().splitlines()) == 1


def test_old_format_is_refused_with_repack_hint(store: Store) -> None:
    _edit_manifest(store.root, lambda m: m.update(version=1))
    with pytest.raises(StoreCorrupt, match="re-pack with this engine version"):
        Store.open(store.root)


@pytest.mark.parametrize("bad", ["../../x.bin", "/etc/passwd", "experts/../../x.bin", "./x"])
def test_layer_path_outside_the_store_is_refused(
    store: Store, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit_manifest(store.root, lambda m: m["layers"][0].update(file=bad))
    with pytest.raises(StoreCorrupt, match="layer 0: file"):
        Store.open(store.root)
    assert main(["run", str(store.root), "--prompt-ids", "1", "--max-tokens", "1"]) == 1
    assert "layer 0: file" in capsys.readouterr().err
    assert main(["verify", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert "layer 0:" in out and ("absolute" in out or "leaves the store" in out)


def test_symlink_leaving_the_store_is_refused(store: Store, tmp_path: Path) -> None:
    layer_file = store.layer_file(store.layers[0].layer)
    outside = tmp_path / "outside.bin"
    shutil.copyfile(layer_file, outside)
    layer_file.unlink()
    layer_file.symlink_to(outside)
    with pytest.raises(StoreCorrupt, match="link leading outside the store"):
        Store.open(store.root)


def test_fifo_layer_file_does_not_hang(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    layer_file = store.layer_file(store.layers[0].layer)
    layer_file.unlink()
    os.mkfifo(layer_file)
    with pytest.raises(StoreCorrupt, match="not a regular file"):
        Store.open(store.root)
    assert main(["verify", str(store.root)]) == 1
    assert "not a regular file" in capsys.readouterr().out
    # The reader itself refuses it too (a FIFO swapped in after the store was opened).
    with ExpertReader(store, "buffered") as r, pytest.raises(ReadError, match="not a regular"):
        r.submit(store.layers[0].layer, 0).result()


def test_path_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        Store.open(f)
    with pytest.raises(StoreError, match="no such store directory"):
        Store.open(tmp_path / "nope")


def test_mmap_file_truncated_during_run_is_a_clean_error(store: Store) -> None:
    """Before the fix this died of SIGBUS (exit -7), so it runs in a child process."""
    layer = store.layers[0].layer
    script = textwrap.dedent(f"""
        import os
        from engine.errors import ReadError
        from engine.reader import ExpertReader
        from engine.store import Store
        s = Store.open({str(store.root)!r})
        with ExpertReader(s, "mmap", read_chunk_bytes=8192) as r:
            r.submit({layer}, 0).result()
            os.truncate(s.layer_file({layer}), s.expert({layer}, 3).offset + 100)
            try:
                r.submit({layer}, 3).result()
            except ReadError as e:
                print("ReadError", e)
    """)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("ReadError") and "truncated" in p.stdout


def test_mmap_refuses_a_file_shorter_than_the_manifest(store: Store) -> None:
    layer = store.layers[0].layer
    path = store.layer_file(layer)
    opened = Store.open(store.root)  # opened while intact, truncated before the first read
    os.truncate(path, path.stat().st_size - 4096)
    with (
        ExpertReader(opened, "mmap") as r,
        pytest.raises(ReadError, match="manifest says"),
    ):
        r.submit(layer, 0).result()


def test_fifo_manifest_and_profile_do_not_hang(store: Store) -> None:
    (store.root / "profile.json").unlink()
    os.mkfifo(store.root / "profile.json")
    with pytest.raises(StoreCorrupt, match="routing profile is not a regular file"):
        Store.open(store.root).profile()
    (store.root / "manifest.json").unlink()
    os.mkfifo(store.root / "manifest.json")
    with pytest.raises(StoreCorrupt, match="manifest is not a regular file"):
        Store.open(store.root)
