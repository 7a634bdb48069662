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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from engine.errors import StoreCorrupt, StoreError

FORMAT = "moe-expert-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

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


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an expert: `name` is `<mlx projection>.<weight|scales|biases>`."""

    name: str
    offset: int  # bytes from the expert's start
    nbytes: int
    shape: tuple[int, ...]
    dtype: str  # a key of _MX_DTYPES


@dataclass(frozen=True)
class ExpertLoc:
    offset: int  # bytes from the start of the layer file; multiple of align
    nbytes: int  # data bytes (what the checksum covers)
    span: int  # nbytes rounded up to align (what an O_DIRECT read fetches)
    checksum: str  # crc32 of the nbytes data bytes, 8 hex digits


@dataclass(frozen=True)
class LayerEntry:
    layer: int  # decoder layer index
    block: str  # dotted path of the MoE block in the mlx-lm model, e.g. model.layers.3.mlp
    file: str  # relative to the store root
    file_size: int
    order: tuple[int, ...]  # expert ids in on-disk order
    experts: tuple[ExpertLoc, ...]  # indexed by expert id


class Store:
    """An opened store. Cheap to open: reads the manifest only."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        try:
            self.model_type: str = manifest["model_type"]
            self.num_experts: int = int(manifest["num_experts"])
            self.top_k: int = int(manifest["top_k"])
            self.bits: int = int(manifest["quant"]["bits"])
            self.group_size: int | None = manifest["quant"].get("group_size")
            self.dtype: str = manifest["quant"]["dtype"]
            self.layout: str = manifest["layout"]
            self.align: int = int(manifest["align"])
            self.expert_tensors = tuple(
                TensorSpec(t["name"], t["offset"], t["nbytes"], tuple(t["shape"]), t["dtype"])
                for t in manifest["expert_tensors"]
            )
            self.layers = tuple(
                LayerEntry(
                    layer=int(le["layer"]),
                    block=le["block"],
                    file=le["file"],
                    file_size=int(le["file_size"]),
                    order=tuple(le["order"]),
                    experts=tuple(ExpertLoc(**x) for x in le["experts"]),
                )
                for le in manifest["layers"]
            )
            self.fingerprint: str = manifest["fingerprint"]
        except (KeyError, TypeError, ValueError) as e:
            raise StoreCorrupt(
                f"{root / MANIFEST}: manifest is missing or has a bad field ({e!r}); "
                "re-pack the store"
            ) from e
        self._by_layer = {le.layer: le for le in self.layers}

    @classmethod
    def open(cls, path: str | Path) -> Store:
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise StoreError(f"{root}: no such store directory; build one with `moe-engine pack`")
        if not mpath.is_file():
            raise StoreError(
                f"{mpath}: missing; {root} is not a packed store (run `moe-engine pack`)"
            )
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise StoreCorrupt(f"{mpath}: not valid JSON ({e}); re-pack the store") from e
        if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
            raise StoreError(
                f"{mpath}: format {manifest.get('format')!r} v{manifest.get('version')!r} is not "
                f"{FORMAT!r} v{FORMAT_VERSION}; re-pack with this engine version"
            )
        return cls(root, manifest)

    # ---- locations ---------------------------------------------------------------------------

    @property
    def dense_dir(self) -> Path:
        return self.root / "dense"

    @property
    def config(self) -> dict[str, Any]:
        return json.loads((self.dense_dir / "config.json").read_text())

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

    def profile(self) -> dict[int, list[int]] | None:
        """Per-layer routed counts from calibration (for the pinned cache policy), if recorded."""
        p = self.root / "profile.json"
        if not p.is_file():
            return None
        data = json.loads(p.read_text())
        return {int(k): list(v) for k, v in data["counts"].items()}

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


def np_dtype(name: str) -> type:
    return _NP_DTYPES[name]


def mx_dtype(name: str) -> mx.Dtype:
    return _MX_DTYPES[name]
