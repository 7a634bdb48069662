"""Reading side of the packed expert store: manifest, expert locations, bytes -> arrays.

Layout of a store directory (written by `engine.pack`, atomically):

    manifest.json            this file's `Manifest`
    dense/config.json        the model config (plus `quantization` when non-expert weights are)
    dense/model.safetensors  every non-expert tensor, names as in the source checkpoint
    dense/<tokenizer files>  copied when the source has them
    dense/probe_suite.toml   the source's probe suite (prompt ids), when it has one
    experts/layer_NNN.bin    one file per MoE layer; each expert's tensors contiguous, each expert
                             starting at a multiple of `align` and padded to one (O_DIRECT)
    profile.json             optional routing profile (per-layer expert counts) from calibration

Every expert of every layer has the same tensor layout (`expert_tensors`, offsets relative to the
expert's start), so a reader needs only (file, offset, nbytes) per expert.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from engine.errors import StoreCorrupt, StoreError
from engine.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ExpertLoc,
    LayerEntry,
    Manifest,
    TensorSpec,
    layout_problems,
    parse_manifest,
    path_problem,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "ExpertLoc", "LayerEntry", "Store", "TensorSpec"]

# Dense files every store needs; the others (tokenizer, suite) are optional.
REQUIRED_DENSE = ("config.json", "model.safetensors")
MAX_MANIFEST_BYTES = 256 << 20  # far above any real manifest; refuses a runaway file early

# numpy has no bfloat16: such tensors travel as uint16 and are viewed as bf16 in MLX.
_NP_DTYPES = {
    "uint32": np.uint32,
    "uint16": np.uint16,
    "uint8": np.uint8,
    "float16": np.float16,
    "bfloat16": np.uint16,
    "float32": np.float32,
}
_MX_DTYPES = {
    "uint32": mx.uint32,
    "uint16": mx.uint16,
    "uint8": mx.uint8,
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "float32": mx.float32,
}


class Store:
    """An opened store. Cheap to open: reads the manifest and stats the files it names."""

    def __init__(self, root: Path, m: Manifest) -> None:
        self.root = root
        self.parsed = m
        self.manifest = m.raw
        self.model_type = m.model_type
        self.num_experts = m.num_experts
        self.top_k = m.top_k
        self.bits = m.bits
        self.group_size = m.group_size
        self.dtype = m.dtype
        self.layout = m.layout
        self.align = m.align
        self.expert_tensors = m.expert_tensors
        self.layers = m.layers
        self.fingerprint = m.fingerprint
        self._by_layer = {le.layer: le for le in self.layers}
        self._config: dict[str, Any] | None = None

    @classmethod
    def open(cls, path: str | Path, *, check: bool = True) -> Store:
        """Open a store; check=False skips the consistency checks (verify lists them itself)."""
        root = Path(path)
        if not root.exists():
            raise StoreError(f"{root}: no such store directory; build one with `moe-engine pack`")
        if not root.is_dir():
            raise StoreError(f"{root}: is not a directory; a store is one (moe-engine pack)")
        mpath = root / MANIFEST
        if not mpath.exists():
            raise StoreError(
                f"{mpath}: missing; {root} is not a packed store (run `moe-engine pack`)"
            )
        _regular(mpath, "manifest")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise StoreCorrupt(f"{mpath}: {mpath.stat().st_size} bytes is not a manifest; re-pack")
        store = cls(root, parse_manifest(mpath.read_bytes(), str(mpath)))
        if check:
            problems = layout_problems(store.parsed) + store.file_problems()
            if problems:
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                raise StoreCorrupt(
                    f"{root}: {problems[0]}{more}; run `moe-engine verify {root}` for the full "
                    "list and re-pack the store"
                )
        return store

    def file_problems(self) -> list[str]:
        """Layer and dense files: inside the store, regular, of the manifest's size (stat only)."""
        out = []
        for le in self.layers:
            if path_problem(le.file) is None:
                out += self._file_problem(le.file, le.file_size, f"layer {le.layer}", True)
        listed = {d.name: d for d in self.parsed.dense}
        for name in REQUIRED_DENSE:
            if name not in listed:
                out.append(f"manifest: dense file {name} is not listed")
        for d in self.parsed.dense:
            if "/" in d.name or path_problem(d.name):
                out.append(f"dense file {d.name!r}: not a plain file name")
                continue
            out += self._file_problem(f"dense/{d.name}", d.size, "dense", d.name in REQUIRED_DENSE)
        return out

    def _file_problem(self, rel: str, size: int, what: str, required: bool) -> list[str]:
        path = self.root / rel
        try:
            if not path.resolve().is_relative_to(self.root.resolve()):
                return [f"{what}: {rel} is a link leading outside the store"]
            st = os.stat(path)
        except FileNotFoundError:
            return [f"{what}: {rel} is missing"] if required else []
        except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
            return [f"{what}: {rel} cannot be read ({e})"]
        if not stat.S_ISREG(st.st_mode):
            return [f"{what}: {rel} is not a regular file"]
        if st.st_size != size:
            return [
                f"{what}: {rel} is {st.st_size} bytes, manifest says {size} "
                "(truncated or overwritten)"
            ]
        return []

    # ---- locations ---------------------------------------------------------------------------

    @property
    def dense_dir(self) -> Path:
        return self.root / "dense"

    @property
    def config(self) -> dict[str, Any]:
        """dense/config.json (read once); StoreCorrupt if it is not a JSON object."""
        if self._config is None:
            path = self.dense_dir / "config.json"
            _regular(path, "model config")
            try:
                cfg = json.loads(path.read_bytes().decode("utf-8"))
            except (OSError, ValueError, RecursionError) as e:
                raise StoreCorrupt(f"{path}: not readable JSON ({e}); re-pack the store") from None
            if not isinstance(cfg, dict):
                raise StoreCorrupt(f"{path}: must be a JSON object; re-pack the store")
            self._config = cfg
        return self._config

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(le.layer for le in self.layers)

    def layer(self, layer: int) -> LayerEntry:
        try:
            return self._by_layer[layer]
        except KeyError:
            raise StoreError(f"{self.root}: layer {layer} has no experts in this store") from None

    def layer_file(self, layer: int) -> Path:
        return self.root / self.layer(layer).file

    def expert(self, layer: int, expert: int) -> ExpertLoc:
        entry = self.layer(layer)
        if not 0 <= expert < len(entry.experts):
            raise StoreError(
                f"{self.root}: layer {layer} has experts 0..{len(entry.experts) - 1}, not {expert}"
            )
        return entry.experts[expert]

    @property
    def expert_nbytes(self) -> int:
        """Data bytes of one expert (all experts have the same size)."""
        return self.layers[0].experts[0].nbytes

    @property
    def expert_span(self) -> int:
        return self.layers[0].experts[0].span

    @property
    def source_expert_nbytes(self) -> int:
        """One expert's bytes at the precision of the checkpoint this store was packed from:
        the model's size, the same for every store variant packed from that checkpoint (a
        16-bit source counts 2 bytes a weight; a quantized one its bits plus bf16 scales and
        biases). An unreadable source record counts the store's own bytes."""
        q = (self.manifest.get("source") or {}).get("quantization")
        params = 0
        for t in self.expert_tensors:
            if t.name.endswith((".scales", ".biases")) and self.bits < 16:
                continue  # quantization metadata, not weights
            n = math.prod(t.shape)
            params += n * 32 // self.bits if self.bits < 16 and t.dtype == "uint32" else n
        if q is None:
            return 2 * params
        bits, group = (q.get("bits"), q.get("group_size")) if isinstance(q, dict) else (0, 0)
        if not (isinstance(bits, int) and isinstance(group, int) and 2 <= bits <= 8 and group > 0):
            return self.expert_nbytes
        return params * bits // 8 + 2 * 2 * params // group

    def profile(self) -> dict[int, list[int]] | None:
        """Per-layer routed counts from calibration (for the pinned cache policy), if recorded."""
        p = self.root / "profile.json"
        if not p.exists():
            return None
        return parse_profile(p, self.moe_layers, self.num_experts)

    # ---- decoding ----------------------------------------------------------------------------

    def decode(
        self, buf: np.ndarray | memoryview | bytes, *, where: str = ""
    ) -> dict[str, mx.array]:
        """An expert's bytes -> {'gate_proj.weight': mx.array, ...} (copies into MLX memory)."""
        raw = np.frombuffer(buf, dtype=np.uint8)
        out: dict[str, mx.array] = {}
        for t in self.expert_tensors:
            end = t.offset + t.nbytes
            if end > raw.size:
                raise StoreCorrupt(
                    f"{self.root}: {where} expert buffer is short ({raw.size} < {end})"
                )
            arr = raw[t.offset : end].view(_NP_DTYPES[t.dtype]).reshape(t.shape)
            a = mx.array(arr)
            if t.dtype == "bfloat16":
                a = a.view(mx.bfloat16)
            out[t.name] = a
        return out


def parse_profile(path: Path, layers: tuple[int, ...], num_experts: int) -> dict[int, list[int]]:
    """profile.json -> {layer: counts per expert}; StoreCorrupt unless it covers every MoE layer
    with num_experts non-negative counts."""
    _regular(path, "routing profile")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        counts = data["counts"]
        out = {int(k): list(v) for k, v in counts.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise StoreCorrupt(
            f"{path}: not a routing profile ({type(e).__name__}: {e}); re-pack the store"
        ) from None
    if sorted(out) != sorted(layers):
        raise StoreCorrupt(f"{path}: covers layers {sorted(out)}, the store has {list(layers)}")
    for layer, c in out.items():
        ok = len(c) == num_experts and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in c
        )
        if not ok:
            raise StoreCorrupt(
                f"{path}: layer {layer} needs {num_experts} non-negative integer counts"
            )
    return out


def _regular(path: Path, what: str) -> None:
    """Refuse anything but a regular file before opening it (a FIFO would block the open)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise StoreError(f"{path}: {what} is missing; re-pack the store") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read the {what} ({e})") from None
    if not stat.S_ISREG(mode):
        raise StoreCorrupt(f"{path}: the {what} is not a regular file")


def np_dtype(name: str) -> type:
    return _NP_DTYPES[name]


def mx_dtype(name: str) -> mx.Dtype:
    return _MX_DTYPES[name]
