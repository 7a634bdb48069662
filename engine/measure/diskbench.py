"""Raw read bandwidth of a file: the I/O roofline an engine config is compared against.

Shared by `benchmarks/disk_roofline.py`, `bench` (a disk read at the config's own read size and
parallelism) and the machine fingerprint. Reads go through the same primitives as ExpertReader
(aligned buffers, preadv, O_DIRECT) so the roofline measures what the engine could reach.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np

from engine.errors import ReadError
from engine.pagecache import evict
from engine.rawio import ALIGN, aligned_empty, pread_full
from engine.reader import IO_MODES
from engine.store import Store

PATTERNS = ("sequential", "random")


def make_test_file(path: str | Path, nbytes: int, block: int = 8 << 20) -> Path:
    """Write `nbytes` (rounded up to ALIGN) of incompressible data, fsync it, evict it."""
    path = Path(path)
    nbytes = -(-nbytes // ALIGN) * ALIGN
    rng = np.random.default_rng(0)
    # One random block repeated: incompressible enough for a disk, cheap for 2 cores.
    blob = rng.integers(0, 256, min(block, nbytes), dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        left = nbytes
        while left:
            n = min(left, len(blob))
            f.write(blob[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    evict(path, sync=True)
    return path


def measure_read_bandwidth(
    path: str | Path,
    chunk_bytes: int,
    threads: int,
    io_mode: str,
    total_bytes: int,
    *,
    pattern: str = "sequential",
    cold: bool = True,
    seed: int = 0,
) -> float:
    """GB/s (1e9 B/s) reading `total_bytes` of `path` in `chunk_bytes` reads on `threads`.

    sequential: consecutive chunks handed out to threads in turn (deep queue, large I/O);
    random: chunk-aligned offsets in random order (expert reads of an uncached model).
    cold=True evicts the file from the page cache first so buffered/mmap read the disk.
    """
    if io_mode not in IO_MODES:
        raise ValueError(f"io_mode must be one of {IO_MODES}, got {io_mode!r}")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    if chunk_bytes < ALIGN or chunk_bytes % ALIGN or threads < 1:
        raise ValueError("chunk_bytes must be a multiple of 4096 and threads >= 1")
    path = Path(path)
    size = path.stat().st_size
    n_chunks = min(total_bytes, size) // chunk_bytes
    if n_chunks == 0:
        raise ValueError(f"{path}: {size} bytes is smaller than one {chunk_bytes}-byte chunk")
    offsets = [i * chunk_bytes for i in range(n_chunks)]
    if pattern == "random":
        offsets = [i * chunk_bytes for i in range(size // chunk_bytes)]
        np.random.default_rng(seed).shuffle(offsets)
        offsets = offsets[:n_chunks]
    if cold:
        evict(path)

    flags = os.O_RDONLY | (os.O_DIRECT if io_mode == "direct" and hasattr(os, "O_DIRECT") else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise ReadError(f"{path}: cannot open for {io_mode} reads ({e})") from e
    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if io_mode == "mmap" else None
    # A shared iterator hands out work; next() on it is atomic under the GIL.
    work = iter(offsets)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        buf = aligned_empty(chunk_bytes)
        view = memoryview(buf)
        try:
            while True:
                with lock:
                    off = next(work, None)
                if off is None:
                    return
                if mm is not None:
                    buf[:] = np.frombuffer(mm, np.uint8, chunk_bytes, off)
                elif pread_full(fd, view, off) < chunk_bytes:
                    raise ReadError(f"{path}: short read at offset {off}")
        except BaseException as e:
            errors.append(e)

    try:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        dt = time.perf_counter() - t0
    finally:
        if mm is not None:
            mm.close()
        os.close(fd)
    if errors:
        raise ReadError(f"{path}: {io_mode} read benchmark failed: {errors[0]}") from errors[0]
    return n_chunks * chunk_bytes / dt / 1e9


def sweep(
    path: str | Path,
    chunks: list[int],
    threads: list[int],
    modes: list[str],
    total_bytes: int,
    pattern: str = "sequential",
) -> dict[tuple[str, int, int], float]:
    """GB/s for every (io_mode, chunk_bytes, threads); the full mode x chunk x threads grid."""
    out: dict[tuple[str, int, int], float] = {}
    for mode, chunk, nt in itertools.product(modes, chunks, threads):
        out[(mode, chunk, nt)] = measure_read_bandwidth(
            path, chunk, nt, mode, total_bytes, pattern=pattern
        )
    return out


def expert_read_bandwidth(store: Store, total_bytes: int = 256 << 20, threads: int = 8) -> float:
    """GB/s of the disk roofline the benchmarks compare with: random expert-sized O_DIRECT
    reads of the first MoE layer's file on `threads` threads, page cache evicted first."""
    path = store.layer_file(store.moe_layers[0])
    return measure_read_bandwidth(
        path, store.expert_span, threads, "direct", total_bytes, pattern="random"
    )
