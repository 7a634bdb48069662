"""PriorityPool: a thread pool whose queue serves the lowest priority number first.

The reader runs demand reads (a layer is waiting for them) at priority 0 and prefetch guesses
at 1: with one FIFO queue, guesses for layers ahead sat in front of the next layer's demand
reads, so deeper prefetch made a latency-bound disk slower. Within a priority, FIFO. Same
contract as ThreadPoolExecutor for what the reader uses: `submit` returns a Future that
`cancel()` can still stop while queued; `shutdown(cancel_futures=True)` cancels the queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class PriorityPool:
    def __init__(self, threads: int, name: str = "pool") -> None:
        self._q: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any, priority: int = 0) -> Future[Any]:
        fut: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit after shutdown")
            self._q.put((priority, next(self._seq), (fut, fn, args)))
        return fut

    def _work(self) -> None:
        while True:
            _, _, item = self._q.get()
            if item is None:  # shutdown sentinel
                return
            fut, fn, args = item
            if not fut.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                fut.set_result(fn(*args))
            except BaseException as e:
                fut.set_exception(e)

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        _, _, item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        item[0].cancel()
            # Sentinels sort after every real item (priority above any a caller uses).
            for _ in self._threads:
                self._q.put((1 << 30, next(self._seq), None))
        if wait:
            for t in self._threads:
                t.join()
