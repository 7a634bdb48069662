"""Dense weights of an HF per-expert checkpoint whose family has no key table, as mlx-lm sees them.

Some families' `sanitize` decide from the routed experts' HF names that the whole checkpoint is
in HF form and then also fix the dense tensors (qwen3_next adds 1 to its RMSNorm weights and
moves conv1d axes). The store's dense part is loaded without its experts, so that decision
would be lost; instead pack runs sanitize once over the real dense tensors plus expert markers
(`engine.hf_experts`) and stores the sanitized dense tensors, which later loads leave as they are.
Tensors are evaluated and written one at a time: RAM stays near the largest dense tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import mlx.core as mx
import numpy as np

from engine.errors import CheckpointError
from engine.families import build_skeleton
from engine.hf_experts import SLOTS, used_sources

# mlx dtype -> safetensors code (numpy has no bf16: it travels as its uint16 bits)
_ST = {
    mx.bfloat16: "BF16",
    mx.float16: "F16",
    mx.float32: "F32",
    mx.uint32: "U32",
    mx.uint8: "U8",
    mx.int32: "I32",
    mx.int64: "I64",
    mx.bool_: "BOOL",
}


def sanitized_dense(ckpt: Any) -> dict[str, mx.array]:
    """Lazy sanitized dense tensors (mlx names) of a checkpoint with `hf_names`."""
    lazy: dict[str, mx.array] = {}
    for f in sorted({r.file for r in ckpt.tensors.values()}):
        lazy.update(mx.load(str(f)))  # lazy: a tensor's bytes are read when it is evaluated
    # Expert tensors stand in as small markers (their slabs shrunk to SLOTS per axis, a fused
    # tensor's expert axis kept) so sanitize's splits still work without reading them.
    fused = {s.name for srcs in ckpt.hf_names.values() for s in srcs if s.index is not None}
    experts = used_sources(ckpt.hf_names)
    weights = {}
    for n, a in lazy.items():
        if n in experts:
            lead = a.shape[:1] if n in fused else ()
            a = mx.zeros((*lead, *([SLOTS] * (a.ndim - len(lead)))), dtype=mx.int32)
        weights[n] = a
    skeleton = build_skeleton(ckpt.config)
    try:
        out = skeleton.sanitize(weights)
    except Exception as e:  # the family's own sanitize failing is the checkpoint's problem
        raise CheckpointError(f"{ckpt.root}: mlx-lm's sanitize failed on it ({e!r})") from e
    return {n: a for n, a in out.items() if n not in ckpt.hf_names}


def write_sanitized_dense(
    ckpt: Any, path: Path, write: Callable[[BinaryIO, bytes | memoryview], None]
) -> None:
    tensors = sanitized_dense(ckpt)
    header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for n, a in tensors.items():
        if a.dtype not in _ST:
            raise CheckpointError(f"{ckpt.root}: tensor {n} has dtype {a.dtype}, not storable")
        header[n] = {
            "dtype": _ST[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + a.nbytes],
        }
        offset += a.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # safetensors pads the header to 8 bytes
    with open(path, "wb") as out:
        write(out, len(hb).to_bytes(8, "little"))
        write(out, hb)
        for n in list(tensors):
            a = tensors.pop(n)  # written, then dropped: one dense tensor in RAM at a time
            mx.eval(a)
            b = a.view(mx.uint16) if a.dtype == mx.bfloat16 else a
            write(out, np.ascontiguousarray(np.array(b)).tobytes())
