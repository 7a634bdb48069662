"""What one expert read needs: where experts live (`ExpertSource`: a Store, or anything with
its two methods) and the state of one read in flight (`Request`), shared by the reader's
threads."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.store import ExpertLoc


class ExpertSource(Protocol):
    def layer_file(self, layer: int) -> Path: ...
    def expert(self, layer: int, expert: int) -> ExpertLoc: ...


class Request:
    """One expert read in flight: its buffer, chunk plan and (for submit) the caller's future."""

    __slots__ = (
        "buf",
        "chunks",
        "error",
        "expert",
        "future",
        "layer",
        "left",
        "length",
        "loc",
        "lock",
        "path",
        "ran",
        "speculative",
        "t0",
    )

    def __init__(self, layer: int, expert: int, loc: ExpertLoc, path: Path, length: int) -> None:
        self.layer = layer
        self.expert = expert
        self.loc = loc
        self.path = path
        self.length = length  # bytes fetched from the file: span (direct) or nbytes
        self.buf: np.ndarray = np.empty(0, dtype=np.uint8)
        self.chunks: list[tuple[int, int]] = []  # (start within the expert, length)
        self.future: Future[np.ndarray] | None = None
        self.left = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.ran = False  # a chunk touched the file (a cancelled request skips the rest)
        self.speculative = False  # a prefetch guess (the reader's `post` may treat it apart)
        self.t0 = 0.0


def manifest_file_size(source: ExpertSource, layer: int) -> int | None:
    """The layer file's size per the manifest, when the source is a Store (has `layer()`)."""
    entry = getattr(source, "layer", None)
    if entry is None:
        return None
    size = getattr(entry(layer), "file_size", None)
    return size if isinstance(size, int) else None
