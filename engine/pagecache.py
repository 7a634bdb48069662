"""The OS page cache as part of the memory budget: measure (mincore), evict (fadvise), bound.

In buffered and mmap modes the store's pages that the kernel keeps cached are RAM the run uses,
so `memory_bytes` must count them and a budget must be able to cap them. Linux only: elsewhere
measuring returns 0 and evicting is a no-op (`SUPPORTED` says which), because there is no
portable mincore/fadvise pair and a wrong number is worse than a stated gap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PAGE = mmap.PAGESIZE
SUPPORTED = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")
UNSUPPORTED_NOTE = (
    "page-cache measurement/eviction needs Linux (mincore + posix_fadvise); "
    f"on {sys.platform} page_cache_bytes reads 0 and budgets cannot evict"
)
# mincore is done over windows so a multi-GB layer file never needs a multi-MB status vector.
_WINDOW = 1 << 30

_PROT_READ = 0x1
_MAP_SHARED = 0x01
_MAP_FAILED = ctypes.c_void_p(-1).value

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        _libc = libc
    return _libc


def resident_bytes(path: str | Path, offset: int = 0, length: int = 0) -> int:
    """Bytes of `path` (or of [offset, offset+length); length 0 = to EOF) in the page cache.

    Maps the file read-only with our own mmap (never touching its pages) so the count is the
    kernel's, not something our measuring faulted in. Rounded to whole pages.
    """
    if not SUPPORTED:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        start = offset - offset % PAGE
        end = size if length <= 0 else min(size, offset + length)
        total = 0
        libc = _c()
        while start < end:
            n = min(_WINDOW, end - start)
            addr = libc.mmap(None, n, _PROT_READ, _MAP_SHARED, fd, start)
            if addr in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"mmap for mincore failed: {os.strerror(err)}", str(path))
            try:
                vec = ctypes.create_string_buffer((n + PAGE - 1) // PAGE)
                if libc.mincore(addr, n, vec) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"mincore failed: {os.strerror(err)}", str(path))
                # Bit 0 of each status byte = that page is resident.
                status = np.frombuffer(vec.raw, dtype=np.uint8)
                total += int(np.count_nonzero(status & 1)) * PAGE
            finally:
                libc.munmap(addr, n)
            start += n
        return total
    finally:
        os.close(fd)


def resident_bytes_many(paths: Iterable[str | Path]) -> int:
    """Sum of resident_bytes over files (e.g. every layer file of a store)."""
    return sum(resident_bytes(p) for p in paths)


def evict(path: str | Path, offset: int = 0, length: int = 0, *, sync: bool = False) -> None:
    """Drop [offset, offset+length) of `path` from the page cache (length 0 = to EOF).

    DONTNEED skips dirty pages, so `sync=True` flushes first: needed right after writing a file
    (bench temp files, a fresh pack), not for a read-only store.
    """
    if not SUPPORTED:
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if sync:
            os.fdatasync(fd)
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evict_all(paths: Iterable[str | Path]) -> None:
    """Evict whole files (cold runs start here); flushes first so freshly packed files go too."""
    for p in paths:
        evict(p, sync=True)


class PageCacheBudget:
    """Keeps the store's pages in the OS page cache within `allowance_bytes`.

    The reader calls `note_read` after each buffered/mmap read; ranges are kept in LRU order and,
    once their total exceeds the allowance, the oldest are evicted (madvise on the mapping first,
    since fadvise cannot drop pages some process still maps). Readahead would cache pages we
    never noted, so readers under a budget disable it (FADV_RANDOM / MADV_RANDOM).
    Pages resident before the budget started are not tracked: call `evict_all` first for a
    strict bound. Thread-safe.
    """

    def __init__(self, allowance_bytes: int) -> None:
        if allowance_bytes < 0:
            raise ValueError(f"allowance_bytes must be >= 0, got {allowance_bytes}")
        self.allowance_bytes = allowance_bytes
        # (path, offset) -> (length, mapping or None); first item = least recently read.
        self._ranges: OrderedDict[tuple[str, int], tuple[int, mmap.mmap | None]] = OrderedDict()
        self._tracked = 0
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self.evictions = 0
        self.evicted_bytes = 0

    @property
    def tracked_bytes(self) -> int:
        return self._tracked

    def note_read(
        self, path: str | Path, offset: int, length: int, mapping: mmap.mmap | None = None
    ) -> None:
        # Whole pages: the kernel caches them whole, and DONTNEED keeps a partly covered page.
        start = offset - offset % PAGE
        length = -(-(offset + length - start) // PAGE) * PAGE
        key = (str(path), start)
        with self._lock:
            old = self._ranges.pop(key, None)
            if old is not None:
                self._tracked -= old[0]
            self._ranges[key] = (length, mapping)
            self._tracked += length
            while self._tracked > self.allowance_bytes and self._ranges:
                (p, off), (n, mm) = self._ranges.popitem(last=False)
                self._tracked -= n
                self._drop(p, off, n, mm)

    def _drop(self, path: str, offset: int, length: int, mapping: mmap.mmap | None) -> None:
        self.evictions += 1
        self.evicted_bytes += length
        if not SUPPORTED:
            return
        start = offset - offset % PAGE
        if mapping is not None and not mapping.closed:
            try:
                n = min(offset + length, len(mapping)) - start
                if n > 0:
                    mapping.madvise(mmap.MADV_DONTNEED, start, n)
            except (OSError, ValueError):
                pass  # the mapping may be closing; fadvise below still drops unmapped pages
        fd = self._fds.get(path)
        if fd is None:
            try:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError:
                return  # the file is gone, so are its pages
        os.posix_fadvise(fd, start, offset + length - start, os.POSIX_FADV_DONTNEED)

    def resident_bytes(self) -> int:
        """Measured (mincore) page-cache bytes of every file this budget has seen."""
        with self._lock:
            paths = list(self._fds) + [p for p, _ in self._ranges]
        return resident_bytes_many(dict.fromkeys(paths))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._ranges.clear()
            self._tracked = 0

    def __enter__(self) -> PageCacheBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
