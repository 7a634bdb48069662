"""Raw positioned reads into page-aligned buffers: what O_DIRECT needs, shared by the reader
and the disk benchmark so both measure the same path."""

from __future__ import annotations

import os

import numpy as np

from engine.config import ALIGN

__all__ = ["ALIGN", "aligned_empty", "pread_full"]


def aligned_empty(nbytes: int) -> np.ndarray:
    """A uint8 buffer of nbytes whose address is a multiple of ALIGN (what O_DIRECT needs)."""
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    skip = -raw.__array_interface__["data"][0] % ALIGN  # .ctypes.data costs ~8 us a call
    return raw[skip : skip + nbytes]


def pread_full(fd: int, view: memoryview, offset: int) -> int:
    """Read into `view` from `offset` until full or EOF; returns bytes read (< len at EOF).

    preadv fills our buffer in place: os.pread would allocate bytes and cost a second copy.
    """
    got = 0
    n = len(view)
    while got < n:
        k = os.preadv(fd, [view[got:]], offset + got)
        if k == 0:
            break
        got += k
    return got
