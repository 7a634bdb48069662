"""ExpertReader on small fake stores: exact bytes in every io_mode, chunking, errors, no hangs."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engine import pagecache
from engine.errors import ReadError
from engine.manifest import checksum
from engine.rawio import ALIGN, aligned_empty
from engine.reader import ExpertReader
from engine.store import ExpertLoc

ROOT = Path(__file__).resolve().parents[1]
# Sizes not multiples of 4096 on purpose: the padding and the short last chunk must be handled.
NBYTES = 3 * ALIGN + 123


class FakeStore:
    """Duck-typed like engine.store.Store: `layer_file` and `expert`, over files we write."""

    def __init__(self, root: Path, layers: int = 2, experts: int = 6, nbytes: int = NBYTES):
        span = -(-nbytes // ALIGN) * ALIGN
        rng = np.random.default_rng(0)
        self.files: dict[int, Path] = {}
        self.locs: dict[int, list[ExpertLoc]] = {}
        self.data: dict[tuple[int, int], bytes] = {}
        for layer in range(layers):
            path = root / f"layer_{layer:03d}.bin"
            locs = []
            with open(path, "wb") as f:
                for e in range(experts):
                    blob = rng.integers(0, 256, nbytes, dtype=np.uint8).tobytes()
                    off = f.tell()
                    f.write(blob + b"\0" * (span - nbytes))
                    locs.append(ExpertLoc(off, nbytes, span, checksum(blob)))
                    self.data[(layer, e)] = blob
            self.files[layer] = path
            self.locs[layer] = locs

    def layer_file(self, layer: int) -> Path:
        return self.files[layer]

    def expert(self, layer: int, expert: int) -> ExpertLoc:
        return self.locs[layer][expert]


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    # On the repo's disk, not pytest's tmp_path: that may be tmpfs, which refuses O_DIRECT.
    (ROOT / "build").mkdir(exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="reader-", dir=ROOT / "build"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store(disk_dir: Path) -> FakeStore:
    return FakeStore(disk_dir)


def _reader(store: FakeStore, mode: str, **kw: int) -> ExpertReader:
    try:
        with ExpertReader(store, mode, **kw) as r:
            r.submit(0, 0).result()
    except ReadError as e:
        if mode == "direct" and "O_DIRECT" in str(e):
            pytest.skip(f"no O_DIRECT here: {e}")
        raise
    return ExpertReader(store, mode, **kw)  # fresh counters


@pytest.mark.parametrize("mode", ["direct", "buffered", "mmap"])
@pytest.mark.parametrize("chunk", [ALIGN, 1 << 20])  # chunked (4 chunks) and whole
def test_exact_bytes_every_mode(store: FakeStore, mode: str, chunk: int) -> None:
    with _reader(store, mode, read_chunk_bytes=chunk, io_threads=3) as r:
        for (layer, e), blob in store.data.items():
            got = r.submit(layer, e).result()
            assert got.dtype == np.uint8 and got.shape == (len(blob),)
            assert got.tobytes() == blob
        assert r.reads == len(store.data)
        span = store.expert(0, 0).span
        per = span if mode == "direct" else NBYTES
        assert r.bytes_read == per * len(store.data)


@pytest.mark.parametrize("mode", ["direct", "buffered", "mmap"])
def test_many_concurrent_submits(store: FakeStore, mode: str) -> None:
    with _reader(store, mode, read_chunk_bytes=ALIGN, io_threads=4) as r:
        keys = list(store.data) * 5
        futs = [r.submit(layer, e) for layer, e in keys]
        for key, f in zip(keys, futs, strict=True):
            assert f.result(timeout=10).tobytes() == store.data[key]
        assert r.reads == len(keys)


def test_reads_from_many_threads(store: FakeStore) -> None:
    # Callers' threads reading while prefetch submits: counters and data stay right.
    with _reader(store, "buffered", read_chunk_bytes=ALIGN, io_threads=2) as r:
        keys = list(store.data) * 4

        def one(key: tuple[int, int]) -> bool:
            f = r.submit(*key)
            ok = r.submit(*key).result().tobytes() == store.data[key]
            return ok and f.result(timeout=10).tobytes() == store.data[key]

        with ThreadPoolExecutor(4) as ex:
            assert all(ex.map(one, keys))
        assert r.reads == 2 * len(keys)


def test_any_expert_source_and_aligned_buffer(store: FakeStore) -> None:
    with ExpertReader(store, "buffered") as r:
        assert r.submit(1, 2).result().tobytes() == store.data[(1, 2)]
    for n in (1, 4096, 5000):
        assert aligned_empty(n).ctypes.data % ALIGN == 0


def _truncate(store: FakeStore) -> None:
    # Cut layer 1 in the middle of expert 3: experts 3.. of that layer are now short.
    loc = store.expert(1, 3)
    os.truncate(store.files[1], loc.offset + 100)


@pytest.mark.parametrize("mode", ["direct", "buffered", "mmap"])
@pytest.mark.parametrize("chunk", [ALIGN, 1 << 20])
def test_truncated_file_raises_in_caller(store: FakeStore, mode: str, chunk: int) -> None:
    _truncate(store)
    with _reader(store, mode, read_chunk_bytes=chunk, io_threads=2) as r:
        with pytest.raises(ReadError) as ei:
            r.submit(1, 4).result()
        msg = str(ei.value)
        assert "layer_001.bin" in msg and "layer 1 expert 4" in msg
        assert str(store.expert(1, 4).offset) in msg
        with pytest.raises(ReadError, match=r"short read|truncated"):
            r.submit(1, 3).result(timeout=10)
        # The reader stays usable after a failure.
        assert r.submit(1, 2).result().tobytes() == store.data[(1, 2)]


def test_worker_failure_midway_fails_future(store: FakeStore, monkeypatch) -> None:
    import engine.reader as reader_mod

    calls = {"n": 0}
    real = reader_mod.pread_full
    lock = threading.Lock()

    def flaky(fd: int, view: memoryview, offset: int) -> int:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 3:
            raise OSError(errno.EIO, "injected I/O error")
        return real(fd, view, offset)

    monkeypatch.setattr(reader_mod, "pread_full", flaky)
    with ExpertReader(store, "buffered", read_chunk_bytes=ALIGN, io_threads=2) as r:
        with pytest.raises(ReadError, match="injected"):
            r.submit(0, 1).result(timeout=10)
        calls["n"] = 0
        with pytest.raises(ReadError, match="injected"):
            r.submit(0, 1).result()


def test_close_with_pending_reads_does_not_hang(store: FakeStore, monkeypatch) -> None:
    import engine.reader as reader_mod

    gate = threading.Event()
    real = reader_mod.pread_full

    def slow(fd: int, view: memoryview, offset: int) -> int:
        gate.wait(5)
        return real(fd, view, offset)

    monkeypatch.setattr(reader_mod, "pread_full", slow)
    r = ExpertReader(store, "buffered", read_chunk_bytes=ALIGN, io_threads=1)
    futs = [r.submit(0, e) for e in range(6)]
    closer = threading.Thread(target=r.close)
    closer.start()
    gate.set()  # let the one running chunk finish so close() can return
    closer.join(10)
    assert not closer.is_alive()
    outcomes = []
    for f in futs:
        try:
            outcomes.append(f.result(timeout=10).nbytes == NBYTES)
        except ReadError as e:
            assert "closed" in str(e) or "cancelled" in str(e)
            outcomes.append(False)
    assert not all(outcomes)  # queued reads were cancelled, not left pending
    with pytest.raises(ReadError, match="closed"):
        r.submit(0, 0).result()
    with pytest.raises(ReadError, match="closed"):
        r.submit(0, 0).result(timeout=1)
    r.close()  # idempotent


def test_direct_on_filesystem_without_o_direct(store: FakeStore, monkeypatch) -> None:
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT flag on this platform")
    real_open = os.open

    def no_direct(path, flags, *a, **kw):  # what tmpfs answers
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", no_direct)
    with ExpertReader(store, "direct") as r:
        with pytest.raises(ReadError, match=r"O_DIRECT.*buffered"):
            r.submit(0, 0).result()
        with pytest.raises(ReadError, match="O_DIRECT"):
            r.submit(0, 1).result(timeout=10)


def test_missing_file_and_bad_args(store: FakeStore) -> None:
    store.files[0].unlink()
    with ExpertReader(store, "buffered") as r, pytest.raises(ReadError, match="layer_000"):
        r.submit(0, 0).result()
    with pytest.raises(ValueError):
        ExpertReader(store, "bogus")
    with pytest.raises(ValueError):
        ExpertReader(store, "buffered", read_chunk_bytes=1000)


@pytest.mark.skipif(not pagecache.SUPPORTED, reason=pagecache.UNSUPPORTED_NOTE)
@pytest.mark.parametrize("mode", ["buffered", "mmap"])
def test_page_budget_bounds_store_pages(disk_dir: Path, mode: str) -> None:
    st = FakeStore(disk_dir, layers=1, experts=24, nbytes=16 * ALIGN)
    path = st.files[0]
    pagecache.evict_all([path])
    if pagecache.resident_bytes(path) > path.stat().st_size // 2:
        pytest.skip(f"{disk_dir}: filesystem ignores FADV_DONTNEED")
    allowance = 4 * 16 * ALIGN
    with (
        pagecache.PageCacheBudget(allowance) as budget,
        ExpertReader(st, mode, io_threads=2, page_budget=budget) as r,
    ):
        for e in [0, 3, 7, 1, 22, 9, 3, 15, 18, 2, 11, 5]:
            assert r.submit(0, e).result().tobytes() == st.data[(0, e)]
            assert pagecache.resident_bytes(path) <= allowance + 16 * ALIGN
        assert budget.evictions > 0


@pytest.mark.parametrize("pattern", ["sequential", "random"])
def test_diskbench_smoke(disk_dir: Path, pattern: str) -> None:
    from engine.measure.diskbench import make_test_file, measure_read_bandwidth

    p = make_test_file(disk_dir / "bench.bin", 1 << 20)
    assert p.stat().st_size == 1 << 20
    for mode in ("buffered", "mmap"):
        gbs = measure_read_bandwidth(p, 64 * 1024, 2, mode, 1 << 20, pattern=pattern)
        assert gbs > 0
    with pytest.raises(ValueError):
        measure_read_bandwidth(p, 1000, 1, "buffered", 1 << 20)
    with pytest.raises(ValueError):
        measure_read_bandwidth(p, 4 << 20, 1, "buffered", 1 << 20)  # chunk > file


def test_cancelled_submit_reads_nothing(store: FakeStore) -> None:
    # Prefetch cancels a wrong guess; a read still queued must then not cost disk time.
    with ExpertReader(store, "buffered", io_threads=1, read_chunk_bytes=ALIGN) as r:
        gate = threading.Event()
        r._pool.submit(gate.wait)  # hold the only worker so the next read stays queued
        try:
            doomed = r.submit(0, 1)
            cancelled = doomed.cancel()
            kept = r.submit(0, 2)
        finally:
            gate.set()
        assert cancelled
        assert kept.result(timeout=30).tobytes() == store.data[(0, 2)]
        assert r.reads == 1 and r.bytes_read == NBYTES


def test_post_result_of_a_read_cancelled_meanwhile_is_discarded(store: FakeStore) -> None:
    # `post` takes something (an arena slot on the CPU path); if the guess is dropped while it
    # runs, the future cannot carry the result, so `discard` must get it back.
    started, proceed = threading.Event(), threading.Event()
    seen: list[tuple[bool, str]] = []

    def post(data: np.ndarray, speculative: bool) -> str:
        seen.append((speculative, "post"))
        started.set()
        proceed.wait(30)
        return "slot-7"

    with ExpertReader(store, "buffered", io_threads=1, post=post, discard=seen.append) as r:
        fut = r.submit(0, 1, speculative=True)
        assert started.wait(30)
        assert fut.cancel()  # still pending: post has not returned
        proceed.set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [(True, "post"), "slot-7"]
        kept = r.submit(0, 2)  # a demand read: post sees speculative=False, result delivered
        proceed.set()
        assert kept.result(timeout=30) == "slot-7" and seen[-1] == (False, "post")


def test_demand_reads_run_before_queued_prefetch_reads() -> None:
    # One worker, held busy: two guesses then one demand read queue up; the demand read must
    # run first, or a deeper prefetch would delay the layer that is waiting.
    from engine.prio_pool import PriorityPool

    pool = PriorityPool(1, name="t")
    gate = threading.Event()
    order: list[str] = []
    pool.submit(gate.wait)
    futs = [pool.submit(order.append, n, priority=1) for n in ("guess-1", "guess-2")]
    futs.append(pool.submit(order.append, "demand", priority=0))
    cancelled = pool.submit(order.append, "cancelled", priority=1)
    assert cancelled.cancel()
    gate.set()
    for f in futs:
        f.result(timeout=5)
    pool.shutdown(wait=True)
    assert order == ["demand", "guess-1", "guess-2"]
