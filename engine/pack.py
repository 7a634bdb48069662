"""Pack a checkpoint into a streaming expert store (format: see engine/store.py).

Streams one tensor at a time: RAM stays bounded by the largest single expert tensor (dense
tensors are copied in chunks), so a checkpoint larger than RAM packs. Everything is written into
`<store>.tmp-XXXX` next to the target and renamed at the end; any failure removes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import mlx.core as mx
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from engine import layout as layout_mod
from engine.checkpoint import Checkpoint, ExpertPart, open_checkpoint
from engine.config import ALIGN, LAYOUTS, QUANT_BITS, QUANT_GROUP_SIZES
from engine.errors import CheckpointError, ConfigError, EngineError, StoreError, StoreExists
from engine.manifest import new_hasher
from engine.model import fits_in_memory
from engine.store import FORMAT, FORMAT_VERSION, MANIFEST, Store, np_dtype
from engine.tmpdirs import make_tmp

TENSOR_ALIGN = 64  # inside an expert: lets a reader view each tensor without a copy
COPY_CHUNK = 16 << 20  # dense tensors are copied in chunks of this size
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _write(f: BinaryIO, data: bytes | memoryview) -> None:
    """Every byte of the store goes through here (tests simulate a full disk by patching it)."""
    f.write(data)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def pack(
    model_dir: Path,
    store_dir: Path,
    bits: int = 16,
    group_size: int = 64,
    layout: str = "natural",
    force: bool = False,
    progress: bool = True,
    calibration_prompts: list[list[int]] | None = None,
) -> Store:
    """Pack `model_dir` into `store_dir`; returns the opened store.

    bits=16 copies expert bytes as they are (an already-quantized mlx-community source keeps
    its own quantization); bits<16 quantizes each expert matrix with `mx.quantize`.
    """
    model_dir, store_dir = Path(model_dir), Path(store_dir)
    if bits not in QUANT_BITS:
        raise ConfigError(f"bits must be one of {QUANT_BITS}, got {bits!r}")
    if group_size not in QUANT_GROUP_SIZES:
        raise ConfigError(f"group_size must be one of {QUANT_GROUP_SIZES}, got {group_size!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if store_dir.exists() and not force:
        raise StoreExists(f"{store_dir}: already exists; pass --force (force=True) to replace it")
    ckpt = open_checkpoint(model_dir)
    quant = _quant_plan(ckpt, bits, group_size)
    specs = _expert_specs(ckpt, quant)

    try:
        store_dir.parent.mkdir(parents=True, exist_ok=True)
        # <store>.tmp-<pid>-XXXX: a pack killed with -9 leaves it; the next pack removes it.
        tmp = make_tmp(store_dir.parent, f"{store_dir.name}.tmp-")
    except OSError as e:
        raise StoreError(
            f"{store_dir}: cannot create it ({e.strerror or e}); is a parent a file?"
        ) from None
    try:
        counts: dict[int, np.ndarray] | None = None
        orders = {b.layer: list(range(ckpt.num_experts)) for b in ckpt.blocks}
        # The routing profile feeds the `pinned` cache policy; calibrating runs the model in
        # memory, so a source too big for RAM gets no profile unless its layout needs one.
        calibrated = layout == "coactivation" or calibration_prompts is not None
        if calibrated or fits_in_memory(ckpt.root) is None:
            prompts = calibration_prompts or layout_mod.calibration_prompts(ckpt)
            counts, coact = layout_mod.calibrate(ckpt, prompts)
            if layout == "coactivation":
                orders = {
                    layer: layout_mod.coactivation_order(counts[layer], coact[layer])
                    for layer in orders
                }
        _write_dense(ckpt, tmp)
        layers = _write_experts(ckpt, tmp, specs, quant, orders, progress)
        if counts is not None:
            profile = {"counts": {str(k): v.tolist() for k, v in counts.items()}}
            (tmp / "profile.json").write_text(json.dumps(profile))
        manifest = _manifest(ckpt, quant, layout, specs, layers, _dense_files(tmp / "dense"))
        # The manifest goes last: a dir with a manifest is a complete store.
        with open(tmp / MANIFEST, "wb") as f:
            _write(f, json.dumps(manifest, indent=1).encode())
            f.flush()
            os.fsync(f.fileno())
        _install(tmp, store_dir, force)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, EngineError):
            hint = (
                "the disk is full; free space and retry"
                if e.errno == errno.ENOSPC
                else "check the path and permissions"
            )
            raise StoreError(
                f"packing {model_dir} into {store_dir} failed ({e}); {hint}. "
                "Nothing was left behind."
            ) from e
        raise
    return Store.open(store_dir)


def _quant_plan(ckpt: Checkpoint, bits: int, group_size: int) -> dict[str, Any]:
    """The store's quant: {bits, group_size, requantize}; refuses what would lose precision."""
    if ckpt.quant is not None:
        src_bits, src_gs = ckpt.quant["bits"], ckpt.quant["group_size"]
        # bits=16 means "do not quantize": a quantized source then keeps its own quantization.
        if bits != 16 and (bits, group_size) != (src_bits, src_gs):
            raise CheckpointError(
                f"{ckpt.root}: is already quantized to {src_bits} bits (group size {src_gs}); "
                f"re-quantizing to {bits} bits (group size {group_size}) would compound error - "
                "pack from the full-precision checkpoint instead"
            )
        return {"bits": src_bits, "group_size": src_gs, "requantize": False}
    if bits == 16:
        return {"bits": 16, "group_size": None, "requantize": False}
    for proj, (_out, in_dim) in ckpt.proj_shapes.items():
        if in_dim % group_size:
            raise CheckpointError(
                f"{ckpt.root}: {proj} input dim {in_dim} is not a multiple of group size "
                f"{group_size}; choose a group size that divides it"
            )
    return {"bits": bits, "group_size": group_size, "requantize": True}


def _expert_specs(ckpt: Checkpoint, quant: dict[str, Any]) -> list[dict[str, Any]]:
    """Tensor layout shared by every expert: names, shapes, dtypes, 64-byte aligned offsets."""
    specs = []
    offset = 0
    if quant["requantize"]:
        bits, gs, fdtype = quant["bits"], quant["group_size"], ckpt.dtype
        itemsize = np.dtype(np_dtype(fdtype)).itemsize
        entries = []
        for proj in ckpt.projections:
            out_dim, in_dim = ckpt.proj_shapes[proj]
            groups = (out_dim, in_dim // gs)
            entries += [
                (f"{proj}.weight", (out_dim, in_dim * bits // 32), "uint32", 4),
                (f"{proj}.scales", groups, fdtype, itemsize),
                (f"{proj}.biases", groups, fdtype, itemsize),
            ]
            if ckpt.biased:  # the linear's bias stays float, as mlx-lm's to_quantized keeps it
                bias = ckpt.expert_parts(ckpt.blocks[0], 0, parts=("bias",))
                ref = next(p for p in bias if p.name == f"{proj}.bias").ref
                size = np.dtype(np_dtype(ref.dtype)).itemsize
                entries.append((f"{proj}.bias", (out_dim,), ref.dtype, size))
    else:
        entries = []
        for p in ckpt.expert_parts(ckpt.blocks[0], 0):
            itemsize = np.dtype(np_dtype(p.ref.dtype)).itemsize
            entries.append((p.name, p.shape, p.ref.dtype, itemsize))
    for name, shape, dtype, itemsize in entries:
        nbytes = int(np.prod(shape)) * itemsize
        specs.append(
            {"name": name, "offset": offset, "nbytes": nbytes, "shape": list(shape), "dtype": dtype}
        )
        offset = _round_up(offset + nbytes, TENSOR_ALIGN)
    return specs


def _to_bytes(a: mx.array) -> bytes:
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)  # numpy has no bf16; the bits are what we store
    return np.array(a).tobytes()


def quantize_expert_tensor(
    raw: bytes, shape: tuple[int, ...], dtype: str, bits: int, group_size: int
) -> list[bytes]:
    """One (out, in) matrix -> [weight uint32, scales, biases] bytes, MLX affine format."""
    w = mx.array(np.frombuffer(raw, dtype=np_dtype(dtype)).reshape(shape))
    if dtype == "bfloat16":
        w = w.view(mx.bfloat16)
    q, s, b = mx.quantize(w, group_size=group_size, bits=bits)
    mx.eval(q, s, b)
    return [_to_bytes(q), _to_bytes(s), _to_bytes(b)]


def _expert_tensors(
    ckpt: Checkpoint, parts: list[ExpertPart], quant: dict[str, Any]
) -> Iterator[bytes]:
    """Yield the bytes of an expert's tensors in spec order, one source tensor at a time."""
    for p in parts:
        raw = ckpt.read(p)
        if quant["requantize"] and p.name.endswith(".weight"):
            yield from quantize_expert_tensor(
                raw, p.shape, p.ref.dtype, quant["bits"], quant["group_size"]
            )
        else:
            yield raw


def _write_experts(
    ckpt: Checkpoint,
    tmp: Path,
    specs: list[dict[str, Any]],
    quant: dict[str, Any],
    orders: dict[int, list[int]],
    progress: bool,
) -> list[dict[str, Any]]:
    (tmp / "experts").mkdir()
    nbytes = specs[-1]["offset"] + specs[-1]["nbytes"]
    span = _round_up(nbytes, ALIGN)
    layers = []
    columns = (
        TextColumn("packing experts"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("experts", total=len(ckpt.blocks) * ckpt.num_experts)
        for block in ckpt.blocks:
            rel = f"experts/layer_{block.layer:03d}.bin"
            experts: list[dict[str, Any] | None] = [None] * ckpt.num_experts
            with open(tmp / rel, "wb") as f:
                for pos, eid in enumerate(orders[block.layer]):
                    parts = ckpt.expert_parts(block, eid)
                    h, written = new_hasher(), 0
                    for spec, data in zip(specs, _expert_tensors(ckpt, parts, quant), strict=True):
                        if len(data) != spec["nbytes"]:
                            raise StoreError(
                                f"layer {block.layer} expert {eid} {spec['name']}: produced "
                                f"{len(data)} bytes, layout expects {spec['nbytes']}"
                            )
                        gap = b"\0" * (spec["offset"] - written)
                        for chunk in (gap, data):
                            _write(f, chunk)
                            h.update(chunk)
                        written = spec["offset"] + len(data)
                    _write(f, b"\0" * (span - written))
                    experts[eid] = {
                        "offset": pos * span,
                        "nbytes": nbytes,
                        "span": span,
                        "checksum": h.hexdigest(),
                    }
                    bar.advance(task)
            layers.append(
                {
                    "layer": block.layer,
                    "block": block.path,
                    "file": rel,
                    "file_size": ckpt.num_experts * span,
                    "order": list(orders[block.layer]),
                    "experts": experts,
                }
            )
    return layers


def _write_dense(ckpt: Checkpoint, tmp: Path) -> None:
    """Non-expert tensors, source names, into one safetensors file; plus config, tokenizer."""
    dense = tmp / "dense"
    dense.mkdir()
    if ckpt.hf_names is not None:  # family without a key table: dense as mlx-lm sanitizes it
        from engine.pack_dense import write_sanitized_dense

        write_sanitized_dense(ckpt, dense / "model.safetensors", _write)
        _copy_side_files(ckpt, dense)
        return
    names = ckpt.dense_names()
    header: dict[str, Any] = {"__metadata__": {"format": "mlx"}}
    offset = 0
    for n in names:
        r = ckpt.tensors[n]
        header[n] = {
            "dtype": r.st_dtype,
            "shape": list(r.shape),
            "data_offsets": [offset, offset + r.nbytes],
        }
        offset += r.nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)  # safetensors pads the header to 8 bytes
    with open(dense / "model.safetensors", "wb") as out:
        _write(out, len(hb).to_bytes(8, "little"))
        _write(out, hb)
        for n in names:
            r = ckpt.tensors[n]
            with open(r.file, "rb") as src:
                src.seek(r.offset)
                left = r.nbytes
                while left:
                    chunk = src.read(min(left, COPY_CHUNK))
                    if not chunk:
                        raise CheckpointError(f"{r.file}: tensor {n} is truncated")
                    _write(out, chunk)
                    left -= len(chunk)
    _copy_side_files(ckpt, dense)


def _copy_side_files(ckpt: Checkpoint, dense: Path) -> None:
    """config.json, tokenizer files and the probe suite travel with the dense weights."""
    shutil.copyfile(ckpt.root / "config.json", dense / "config.json")
    for name in TOKENIZER_FILES:
        if (ckpt.root / name).is_file():
            shutil.copyfile(ckpt.root / name, dense / name)
    if (ckpt.root / "probe_suite.toml").is_file():  # travels with the tokenizer: the model's
        shutil.copyfile(ckpt.root / "probe_suite.toml", dense / "probe_suite.toml")


def _dense_files(dense: Path) -> dict[str, Any]:
    """Size and checksum of every file in dense/, so `verify` covers the non-expert bytes too."""
    out = {}
    for f in sorted(dense.iterdir()):
        h = new_hasher()
        with open(f, "rb") as src:
            while chunk := src.read(COPY_CHUNK):
                h.update(chunk)
        out[f.name] = {"size": f.stat().st_size, "checksum": h.hexdigest()}
    return out


def _manifest(
    ckpt: Checkpoint,
    quant: dict[str, Any],
    layout: str,
    specs: list[dict[str, Any]],
    layers: list[dict[str, Any]],
    dense: dict[str, Any],
) -> dict[str, Any]:
    variant = {
        "bits": quant["bits"],
        "group_size": quant["group_size"],
        "layout": layout,
        "version": FORMAT_VERSION,
    }
    fp = hashlib.sha256((ckpt.fingerprint + json.dumps(variant, sort_keys=True)).encode())
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_type": ckpt.model_type,
        "num_experts": ckpt.num_experts,
        "top_k": ckpt.top_k,
        "quant": {"bits": quant["bits"], "group_size": quant["group_size"], "dtype": ckpt.dtype},
        "layout": layout,
        "align": ALIGN,
        "expert_tensors": specs,
        "layers": layers,
        "dense": dense,
        "fingerprint": fp.hexdigest(),
        "source": {
            "path": str(ckpt.root.resolve()),
            "fingerprint": ckpt.fingerprint,
            "layout": ckpt.layout,
            "quantization": ckpt.quant,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _install(tmp: Path, store_dir: Path, force: bool) -> None:
    """Rename the finished temp dir into place; an old store (force) is moved aside first so
    the target is never half-replaced."""
    old = None
    if store_dir.exists():
        if not force:
            raise StoreExists(f"{store_dir}: already exists; pass --force to replace it")
        old = store_dir.with_name(f"{store_dir.name}.old-{os.getpid()}-{time.time_ns()}")
        store_dir.rename(old)
    tmp.rename(store_dir)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()
