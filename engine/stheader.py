"""Read and validate a safetensors header: an untrusted file, so every entry is checked.

A header is a JSON object {name: {dtype, shape, data_offsets: [begin, end]}} (+ `__metadata__`)
after an 8-byte little-endian length. Offsets are relative to the data section, which follows
the header. We check what our readers rely on: types, known dtypes, begin <= end, end - begin =
shape x itemsize, every tensor inside the file, no two tensors overlapping.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError

# safetensors dtype code -> itemsize (every code the format defines)
ST_ITEMSIZE = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
MAX_HEADER = 100 << 20  # the reference implementation's own limit


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int, bytes]:
    """(validated header dict, absolute offset of the data section, raw header bytes).

    Raises CheckpointError (one line, naming the file and tensor) for anything malformed.
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > st.st_size - 8 or n > MAX_HEADER:
                raise CheckpointError(
                    f"{path}: safetensors header length {n} exceeds the file size "
                    f"{st.st_size} (truncated or not safetensors)"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: safetensors header is not JSON text ({e})") from None
    check_header(header, path, 8 + n, st.st_size)
    return header, 8 + n, raw


def check_header(header: Any, path: Path, data_start: int, size: int) -> None:
    """Raise CheckpointError unless `header` describes tensors inside a file of `size` bytes."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header must be a JSON object")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):  # mlx writes null
        raise CheckpointError(f"{path}: safetensors __metadata__ must be an object")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = _entry(info, f"{path}: tensor {name}")
        if data_start + end > size:
            raise CheckpointError(
                f"{path}: tensor {name} ends at byte {data_start + end}, past the end of the "
                f"{size}-byte file (truncated?)"
            )
        spans.append((begin, end, name))
    spans.sort()
    for (_, a_end, a), (b_begin, _, b) in itertools.pairwise(spans):
        if a_end > b_begin:
            raise CheckpointError(f"{path}: tensors {a} and {b} overlap in the data section")


def _entry(info: Any, where: str) -> tuple[int, int]:
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: entry must be an object")
    dtype, shape, offs = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ST_ITEMSIZE:
        raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_nat(d) for d in shape):
        raise CheckpointError(f"{where}: shape must be a list of non-negative integers")
    if not (isinstance(offs, list) and len(offs) == 2 and all(_is_nat(o) for o in offs)):
        raise CheckpointError(f"{where}: data_offsets must be [begin, end] integers, got {offs!r}")
    begin, end = offs
    if begin > end:
        raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] are reversed")
    want = math.prod(shape) * ST_ITEMSIZE[dtype]
    if end - begin != want:
        raise CheckpointError(
            f"{where}: data_offsets span {end - begin} bytes, its shape {shape} of {dtype} "
            f"needs {want}"
        )
    return begin, end


def _is_nat(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0
