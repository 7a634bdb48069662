"""Expert bytes off the disk: one reader, three io_modes, chunked parallel reads, no hangs.

`ExpertReader` reads one expert (`layer`, `expert`) of a packed store as a uint8 array of exactly
`nbytes`, blocking (`read`) or in the background (`submit`, used by prefetch). It needs only a
source with `layer_file(layer) -> Path` and `expert(layer, expert) -> ExpertLoc`: an opened
`engine.store.Store` (anything with its layer_file and expert methods).

An expert larger than `read_chunk_bytes` is split into chunks read in parallel on `io_threads`
workers. `submit` never parks a worker waiting on other workers (chunks complete a shared
future through callbacks), so the pool cannot deadlock however many requests are queued.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from pathlib import Path
from typing import Any

import numpy as np

from engine.contract import KNOBS
from engine.errors import ExpertCorrupt, ReadError
from engine.manifest import checksum
from engine.pagecache import PageCacheBudget
from engine.prio_pool import PriorityPool
from engine.rawio import ALIGN, aligned_empty, pread_full
from engine.readplan import ExpertSource, Request, manifest_file_size

__all__ = ["IO_MODES", "ExpertReader", "ExpertSource"]

IO_MODES = KNOBS["io_mode"].choices
_F_NOCACHE = 48  # macOS fcntl: the closest thing to O_DIRECT there


class ExpertReader:
    """Reads experts of `store` with the given io_mode, chunk size and thread count.

    Counters (thread-safe, read any time): `reads`, `bytes_read` (bytes fetched from the files;
    direct mode fetches the aligned span), `submit_seconds` (submit-to-done wall time of
    background reads; overlapped with compute, so not a stall by itself).
    """

    def __init__(
        self,
        store: ExpertSource,
        io_mode: str = "buffered",
        read_chunk_bytes: int = 1 << 20,
        io_threads: int = 4,
        page_budget: PageCacheBudget | None = None,
        verify: bool = True,
        post: Callable[[np.ndarray, bool], Any] | None = None,
        discard: Callable[[Any], None] | None = None,
    ) -> None:
        if io_mode not in IO_MODES:
            raise ValueError(f"io_mode must be one of {IO_MODES}, got {io_mode!r}")
        if read_chunk_bytes < ALIGN or read_chunk_bytes % ALIGN:
            raise ValueError(f"read_chunk_bytes must be a positive multiple of {ALIGN}")
        if io_threads < 1:
            raise ValueError(f"io_threads must be >= 1, got {io_threads}")
        self.store = store
        self.io_mode = io_mode
        self.read_chunk_bytes = read_chunk_bytes
        self.io_threads = io_threads
        self.page_budget = page_budget
        self.verify = verify  # off only to measure what checking costs (benchmarks)
        # Applied to a submitted read's checked bytes in the reader thread that finished it
        # (the CPU path repacks there, in parallel with compute); the future yields its result.
        self.post = post
        # Undoes `post` for a result no one will take (its future was cancelled meanwhile).
        self.discard = discard
        # Demand reads (priority 0) before prefetch guesses (1): see prio_pool.py.
        self._pool = PriorityPool(io_threads, name="expert-io")
        self._fds: dict[int, int] = {}
        self._maps: dict[int, mmap.mmap] = {}
        self._paths: dict[int, Path] = {}
        self._open_lock = threading.Lock()
        self._stat_lock = threading.Lock()
        self._closed = False
        self.reads = 0
        self.bytes_read = 0
        self.submit_seconds = 0.0

    # ---- public API --------------------------------------------------------------------------

    def submit(self, layer: int, expert: int, *, speculative: bool = False) -> Future[np.ndarray]:
        """Read in the background; `.result()` gives the bytes or raises ReadError. Never hangs:
        closing the reader fails pending futures; `.cancel()` skips chunks not yet started.
        speculative (prefetch): queued behind every demand read."""
        fut: Future[np.ndarray] = Future()
        try:
            if self._closed:
                raise ReadError(f"reader is closed; cannot read layer {layer} expert {expert}")
            req = self._plan(layer, expert)
            req.future = fut
            req.speculative = speculative
            req.left = len(req.chunks)
            req.t0 = time.perf_counter()
            for i in range(len(req.chunks)):
                cf = self._pool.submit(self._read_chunk, req, i, priority=int(speculative))
                cf.add_done_callback(lambda f, r=req: self._chunk_done(r, f))
        except RuntimeError:  # the pool shut down between our check and submit
            _fail(fut, ReadError(f"reader is closed; cannot read layer {layer} expert {expert}"))
        except BaseException as e:
            _fail(fut, e)
        return fut

    def close(self) -> None:
        """Cancel queued chunks (their futures fail with ReadError), wait for running ones and
        for reads in callers' threads, then close files. Idempotent."""
        with self._stat_lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._open_lock:
            for mm in self._maps.values():
                # BufferError: a caller still holds a view; the mapping goes when they drop it.
                with contextlib.suppress(BufferError):
                    mm.close()
            for fd in self._fds.values():
                os.close(fd)
            self._maps.clear()
            self._fds.clear()

    def __enter__(self) -> ExpertReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals ---------------------------------------------------------------------------

    def _plan(self, layer: int, expert: int) -> Request:
        loc = self.store.expert(layer, expert)
        path = self._paths.get(layer)
        if path is None:
            self._open(layer)
            path = self._paths[layer]
        if self.io_mode == "direct":
            length = -(-max(loc.span, loc.nbytes) // ALIGN) * ALIGN
            if loc.offset % ALIGN:
                raise ReadError(
                    f"{path}: layer {layer} expert {expert} offset {loc.offset} is not a "
                    f"multiple of {ALIGN}; O_DIRECT needs aligned experts (re-pack the store, "
                    "or use io_mode='buffered')"
                )
            buf = aligned_empty(length)
        else:
            length = loc.nbytes
            buf = np.empty(length, dtype=np.uint8)
        req = Request(layer, expert, loc, path, length)
        req.buf = buf
        step = self.read_chunk_bytes
        req.chunks = [(s, min(step, length - s)) for s in range(0, length, step)] or [(0, 0)]
        return req

    def _open(self, layer: int) -> None:
        with self._open_lock:
            if layer in self._paths:
                return
            if self._closed:
                raise ReadError(f"reader is closed; cannot open layer {layer}")
            path = Path(self.store.layer_file(layer))
            fd = self._open_fd(path, layer)
            try:
                if self.io_mode == "mmap":
                    size = os.fstat(fd).st_size
                    if size == 0:
                        raise ReadError(f"{path}: layer {layer} file is empty; re-pack the store")
                    want = manifest_file_size(self.store, layer)
                    if want is not None and size != want:
                        raise ReadError(
                            f"{path}: layer {layer} file is {size} bytes, the manifest says "
                            f"{want} (truncated?); run `moe-engine verify` and re-pack the store"
                        )
                    mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                    if self.page_budget is not None and hasattr(mm, "madvise"):
                        mm.madvise(mmap.MADV_RANDOM)  # no readahead the budget cannot see
                    self._maps[layer] = mm
                elif (
                    self.io_mode == "buffered" and self.page_budget and hasattr(os, "posix_fadvise")
                ):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            except OSError as e:
                os.close(fd)
                raise ReadError(f"{path}: cannot map layer {layer} file ({e})") from e
            except BaseException:
                os.close(fd)
                raise
            self._fds[layer] = fd
            self._paths[layer] = path  # published last: _plan's lock-free check relies on it

    def _open_fd(self, path: Path, layer: int) -> int:
        # O_NONBLOCK: opening a FIFO planted as a layer file must fail below, not block forever
        # (it changes nothing for regular files).
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
        if self.io_mode == "direct" and hasattr(os, "O_DIRECT"):
            flags |= os.O_DIRECT
        try:
            fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.EINVAL and self.io_mode == "direct":
                raise ReadError(
                    f"{path}: this filesystem does not support O_DIRECT (EINVAL, e.g. tmpfs); "
                    "use io_mode='buffered' or move the store to a disk filesystem"
                ) from e
            raise ReadError(f"{path}: cannot open layer {layer} file ({e})") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ReadError(f"{path}: layer {layer} file is not a regular file; re-pack the store")
        if self.io_mode == "direct" and not hasattr(os, "O_DIRECT") and sys.platform == "darwin":
            import fcntl

            fcntl.fcntl(fd, _F_NOCACHE, 1)
        return fd

    def _read_chunk(self, req: Request, i: int) -> None:
        if req.future is not None and req.future.cancelled():
            return  # a dropped prefetch guess: spend no I/O on it
        req.ran = True
        start, n = req.chunks[i]
        off = req.loc.offset + start
        # Bytes this chunk must deliver: the padding past nbytes may legitimately be past EOF.
        need = max(0, min(n, req.loc.nbytes - start))
        try:
            if self.io_mode == "mmap":
                mm = self._maps[req.layer]
                # Touching a mapped page past the file's current end raises SIGBUS, which kills
                # the process: a file truncated after mapping must be caught before the copy.
                end = min(len(mm), os.fstat(self._fds[req.layer]).st_size)
                got = max(0, min(n, end - off))
                if got:
                    # Copy out: MLX arrays need memory they own, not a view of a mapping that
                    # the page-cache budget may drop under them.
                    req.buf[start : start + got] = np.frombuffer(mm, np.uint8, got, off)
            else:
                view = memoryview(req.buf)[start : start + n]
                got = pread_full(self._fds[req.layer], view, off)
        except (OSError, ValueError, KeyError) as e:
            raise self._error(req, off, n, f"{type(e).__name__}: {e}") from e
        if got < need:
            raise self._error(
                req, off, n, f"short read, got {got} of {need} bytes (file truncated?)"
            )

    def _error(self, req: Request, off: int, n: int, why: str) -> ReadError:
        return ReadError(
            f"{req.path}: reading layer {req.layer} expert {req.expert} "
            f"(offset {off}, {n} bytes; expert at {req.loc.offset}, {req.loc.nbytes} bytes) "
            f"failed: {why}; run `moe-engine verify` on the store or re-pack it"
        )

    def _chunk_done(self, req: Request, f: Future[None]) -> None:
        err = _failure(f, req)
        with req.lock:
            req.left -= 1
            if err is not None and req.error is None:
                req.error = err
            last = req.left == 0
        fut = req.future
        if fut is None:
            return
        if err is not None and not fut.done():
            _fail(fut, err)  # fail at the first bad chunk; the others still drain the pool
        if last and req.error is None:
            # An exception escaping a done-callback is only logged, which would leave `fut`
            # pending forever: route everything into the future.
            try:
                if req.ran:  # read bytes count (and sit in the page cache) even if cancelled
                    self._finish(req)
                if fut.cancelled():
                    return
                self._check(req)
                with self._stat_lock:
                    self.submit_seconds += time.perf_counter() - req.t0
                data = req.buf[: req.loc.nbytes]
                if self.post is None:
                    fut.set_result(data)
                    return
                out = self.post(data, req.speculative)
                try:
                    fut.set_result(out)
                except InvalidStateError:  # cancelled while `post` ran: give back what it took
                    if self.discard is not None:
                        self.discard(out)
            except BaseException as e:
                _fail(fut, e)

    def _check(self, req: Request) -> None:
        """The bytes just read must hash to the manifest's checksum: a flipped bit on disk (or
        a store edited after packing) must never be computed with."""
        if not self.verify:
            return
        got = checksum(req.buf[: req.loc.nbytes])
        if got != req.loc.checksum:
            root = getattr(self.store, "root", req.path.parent)
            raise ExpertCorrupt(
                f"store {root}: layer {req.layer} expert {req.expert} is corrupt (checksum "
                f"{got}, manifest {req.loc.checksum}, in {req.path.name} at offset "
                f"{req.loc.offset}); run `moe-engine verify {root}` and re-pack the store"
            )

    def _finish(self, req: Request) -> None:
        with self._stat_lock:
            self.reads += 1
            self.bytes_read += req.length
        if self.page_budget is not None and self.io_mode != "direct":
            self.page_budget.note_read(
                req.path, req.loc.offset, req.length, self._maps.get(req.layer)
            )


def _failure(f: Future[Any], req: Request) -> BaseException | None:
    """A chunk future's error as a ReadError (a cancelled chunk means the reader closed)."""
    if f.cancelled():
        return ReadError(
            f"{req.path}: read of layer {req.layer} expert {req.expert} cancelled: "
            "the reader was closed with reads pending"
        )
    try:
        return f.exception()
    except CancelledError:
        return ReadError(f"{req.path}: read of layer {req.layer} expert {req.expert} cancelled")


def _fail(fut: Future[Any], err: BaseException) -> None:
    # InvalidStateError: another chunk already resolved it.
    with contextlib.suppress(Exception):
        fut.set_exception(err)
