"""Stream a synthetic checkpoint's tensors into safetensors shards without holding a shard in RAM.

`mx.save_safetensors` needs every tensor of a file in memory, and one stacked expert tensor of
a real-shape model is gigabytes. Here each shard's header (names, dtypes, shapes, offsets) is
known up front, so it is written first and tensors are filled in place, a few rows at a time
(one expert, or a block of vocabulary rows): peak RAM is one such block, whatever the depth.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

ST_CODES = {mx.bfloat16: "BF16", mx.float16: "F16", mx.float32: "F32", mx.uint32: "U32"}
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4, "U32": 4}

# put(name, first_row, rows): write `rows` (a C-contiguous mx array, leading axis = rows of
# the tensor) at row `first_row` of tensor `name`.
Put = Callable[[str, int, mx.array], None]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors code

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class Group:
    """Tensors one fill function writes together (e.g. a quantized weight + its scales/biases);
    a group never spans two shards."""

    tensors: tuple[TensorSpec, ...]
    fill: Callable[[Put], None]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def shard_groups(groups: list[Group], shard_bytes: int) -> list[list[Group]]:
    shards: list[list[Group]] = [[]]
    size = 0
    for g in groups:
        if shards[-1] and size + g.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(g)
        size += g.nbytes
    return shards


def write_shards(
    out: Path,
    groups: list[Group],
    shard_bytes: int,
    metadata: dict[str, str],
    advance: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Write `groups` into model-XXXXX-of-YYYYY.safetensors under `out`; returns the index
    ({"metadata": {"total_size"}, "weight_map"}). advance(bytes) reports progress."""
    shards = shard_groups(groups, shard_bytes)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        specs = [t for g in shard for t in g.tensors]
        _write_one(out / fname, shard, specs, metadata, advance)
        for t in specs:
            weight_map[t.name] = fname
            total += t.nbytes
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}


def _write_one(
    path: Path,
    groups: list[Group],
    specs: list[TensorSpec],
    metadata: dict[str, str],
    advance: Callable[[int], Any],
) -> None:
    header: dict[str, Any] = {"__metadata__": metadata}
    offsets: dict[str, tuple[int, TensorSpec]] = {}
    pos = 0
    for t in specs:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [pos, pos + t.nbytes],
        }
        offsets[t.name] = (pos, t)
        pos += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-aligned, as the format advises
    base = 8 + len(raw)
    written = dict.fromkeys(offsets, 0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, struct.pack("<Q", len(raw)) + raw)
        os.ftruncate(fd, base + pos)

        def put(name: str, first_row: int, rows: mx.array) -> None:
            start, spec = offsets[name]
            if ST_CODES.get(rows.dtype) != spec.dtype or tuple(rows.shape[1:]) != spec.shape[1:]:
                raise AssertionError(f"{name}: got {rows.dtype}{rows.shape}, planned {spec}")
            row_bytes = spec.nbytes // spec.shape[0] if spec.shape else spec.nbytes
            buf = memoryview(rows).cast("B")
            os.pwrite(fd, buf, base + start + first_row * row_bytes)
            written[name] += buf.nbytes
            advance(buf.nbytes)

        for g in groups:
            g.fill(put)
        short = [n for n, (_, t) in offsets.items() if written[n] != t.nbytes]
        if short:  # a fill function that misses rows would leave zeros: a bug, never data
            raise AssertionError(f"{path.name}: tensors not fully written: {short[:3]}")
    finally:
        os.close(fd)


def progress(show: bool, total: int, label: str) -> _Progress:
    return _Progress(show, total, label)


class _Progress:
    """A rich progress bar (bytes) when wanted, else a no-op; yields a callable advancing it."""

    def __init__(self, show: bool, total: int, label: str) -> None:
        self.show, self.total, self.label = show, total, label
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], Any]:
        if not self.show:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def row_chunks(n: int, rows_per_chunk: int) -> Iterable[tuple[int, int]]:
    for lo in range(0, n, rows_per_chunk):
        yield lo, min(n, lo + rows_per_chunk)
