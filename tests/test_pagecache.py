"""Page-cache measurement, eviction and the budget, on a small file on the real disk."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import pagecache
from engine.pagecache import PageCacheBudget, evict, evict_all, resident_bytes

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not pagecache.SUPPORTED, reason=pagecache.UNSUPPORTED_NOTE)


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    # pytest's tmp_path may be tmpfs, where pages are the file itself and cannot be evicted.
    (ROOT / "build").mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="pagecache-", dir=ROOT / "build"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _write(path: Path, nbytes: int) -> Path:
    path.write_bytes(os.urandom(nbytes))
    return path


def _read_all(path: Path, chunk: int = MiB) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        off = 0
        while data := os.pread(fd, chunk, off):
            off += len(data)
    finally:
        os.close(fd)


def _require_dontneed(path: Path) -> None:
    """Skip (with the reason) where this filesystem ignores DONTNEED, e.g. tmpfs or overlays."""
    evict(path, sync=True)
    left = resident_bytes(path)
    if left > path.stat().st_size // 2:
        pytest.skip(f"{path.parent}: filesystem keeps pages after FADV_DONTNEED ({left} B left)")


def test_empty_file_is_zero(disk_dir: Path) -> None:
    p = disk_dir / "empty.bin"
    p.touch()
    assert resident_bytes(p) == 0
    evict(p)  # no error on an empty file


def test_read_then_evict(disk_dir: Path) -> None:
    p = _write(disk_dir / "f.bin", 4 * MiB)
    _require_dontneed(p)
    assert resident_bytes(p) <= 64 * 1024
    _read_all(p)
    assert resident_bytes(p) >= 4 * MiB - 64 * 1024
    evict(p)
    assert resident_bytes(p) <= 64 * 1024


def test_range_measure_and_evict(disk_dir: Path) -> None:
    p = _write(disk_dir / "f.bin", 4 * MiB)
    _require_dontneed(p)
    _read_all(p)
    evict(p, MiB, 2 * MiB)  # middle half
    assert resident_bytes(p, MiB, 2 * MiB) == 0
    assert resident_bytes(p, 0, MiB) == MiB
    assert resident_bytes(p, 3 * MiB, 0) == MiB


def test_evict_all_many(disk_dir: Path) -> None:
    paths = [_write(disk_dir / f"l{i}.bin", MiB) for i in range(3)]
    _require_dontneed(paths[0])
    for p in paths:
        _read_all(p)
    assert pagecache.resident_bytes_many(paths) >= 3 * MiB - 64 * 1024
    evict_all(paths)
    assert pagecache.resident_bytes_many(paths) <= 64 * 1024


def test_budget_keeps_resident_under_allowance(disk_dir: Path) -> None:
    rng = 64 * 1024
    p = _write(disk_dir / "layer.bin", 32 * rng)
    _require_dontneed(p)
    allowance = 6 * rng
    fd = os.open(p, os.O_RDONLY)
    # Readahead would cache pages nobody noted; readers under a budget turn it off too.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    try:
        with PageCacheBudget(allowance) as budget:
            for i in [0, 5, 3, 9, 31, 12, 5, 20, 7, 8, 1, 30, 2, 14, 15, 16, 0, 5]:
                os.pread(fd, rng, i * rng)
                budget.note_read(p, i * rng, rng)
                assert budget.tracked_bytes <= allowance
                assert resident_bytes(p) <= allowance + rng
            assert budget.evictions > 0
            assert budget.resident_bytes() <= allowance + rng
    finally:
        os.close(fd)


def test_budget_mmap_drops_mapped_pages(disk_dir: Path) -> None:
    import mmap

    rng = 64 * 1024
    p = _write(disk_dir / "layer.bin", 16 * rng)
    _require_dontneed(p)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        mm.madvise(mmap.MADV_RANDOM)
        budget = PageCacheBudget(2 * rng)
        for i in range(16):
            _ = bytes(mm[i * rng : (i + 1) * rng])
            budget.note_read(p, i * rng, rng, mm)
        # Mapped pages survive fadvise alone; the budget must madvise them away first.
        assert resident_bytes(p) <= 3 * rng
        budget.close()


def test_budget_zero_allowance_tracks_nothing(disk_dir: Path) -> None:
    p = _write(disk_dir / "f.bin", MiB)
    budget = PageCacheBudget(0)
    budget.note_read(p, 0, 4096)
    assert budget.tracked_bytes == 0
    assert budget.evictions == 1
    with pytest.raises(ValueError):
        PageCacheBudget(-1)


def test_budget_counts_and_drops_whole_pages(disk_dir: Path) -> None:
    # Experts whose size is not a page multiple: the page holding an expert's tail is cached as
    # a whole page and FADV_DONTNEED keeps partial pages, so the budget must work in pages.
    slot, nbytes, n = 4 * 4096, 4096 + 100, 32
    p = _write(disk_dir / "layer.bin", slot * n)
    _require_dontneed(p)
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    allowance = 2 * slot
    try:
        with PageCacheBudget(allowance) as budget:
            for i in range(n):
                os.pread(fd, nbytes, i * slot)
                budget.note_read(p, i * slot, nbytes)
                assert budget.tracked_bytes <= allowance
            assert resident_bytes(p) <= allowance + slot
    finally:
        os.close(fd)
