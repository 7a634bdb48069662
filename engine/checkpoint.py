"""Open a source checkpoint (HF per-expert or mlx-community stacked) and read it tensor by tensor.

Only safetensors are read, and only through their header: a tensor is (file, offset, nbytes), so
`read` returns its raw bytes (bit-exact, bf16 included) and RAM stays bounded by one tensor.
Everything is validated up front so a pack fails before it writes, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.checkpoint_checks import (
    check_config,
    check_experts,
    check_no_extra_experts,
    hf_key,
    hf_source,
)
from engine.errors import CheckpointError
from engine.families import (
    Family,
    build_skeleton,
    expert_attr,
    family_for,
    get_top_k,
    moe_blocks,
    projections_of,
)
from engine.hf_experts import Source, View, expert_candidates, sanitize_map
from engine.modelconfig import check_model_config
from engine.stheader import read_safetensors_header
from engine.store import np_dtype

# safetensors dtype code -> (store dtype name, itemsize); store names are engine.store's keys.
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: absolute byte offset in `file`."""

    name: str
    file: Path
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    st_dtype: str  # safetensors code, e.g. "BF16"

    @property
    def dtype(self) -> str:
        return ST_DTYPES[self.st_dtype][0] if self.st_dtype in ST_DTYPES else self.st_dtype


@dataclass(frozen=True)
class ExpertPart:
    """One tensor of one expert: `ref` whole (HF) or its row `index` along axis 0 (stacked)."""

    name: str  # "<mlx projection>.<weight|scales|biases|bias>"
    ref: TensorRef
    index: int | None  # None: the whole tensor is this expert's; else a slice of a stacked tensor
    view: View | None = None  # fused HF tensors: the cut of that slab that is this tensor

    @property
    def slab_shape(self) -> tuple[int, ...]:
        return self.ref.shape if self.index is None else self.ref.shape[1:]

    @property
    def slab_nbytes(self) -> int:
        return self.ref.nbytes if self.index is None else self.ref.nbytes // self.ref.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.slab_shape if self.view is None else self.view.shape(self.slab_shape)

    @property
    def nbytes(self) -> int:
        if self.view is None:
            return self.slab_nbytes
        return self.slab_nbytes * int(np.prod(self.shape)) // int(np.prod(self.slab_shape))


@dataclass(frozen=True)
class MoeBlock:
    layer: int
    path: str  # mlx-lm dotted path, e.g. model.layers.3.mlp
    experts: str = "switch_mlp"  # attribute holding the stacked experts (gpt_oss: experts)

    def stacked_key(self, proj: str, part: str = "weight") -> str:
        """mlx-community name, e.g. model.layers.3.mlp.switch_mlp.up_proj.weight."""
        return f"{self.path}.{self.experts}.{proj}.{part}"


class Checkpoint:
    """A validated checkpoint directory. Build with `open_checkpoint`."""

    def __init__(
        self,
        root: Path,
        config: dict[str, Any],
        family: Family,
        tensors: dict[str, TensorRef],
        blocks: list[MoeBlock],
        top_k: int,
        num_experts: int,
        proj_shapes: dict[str, tuple[int, int]],
        layout: str,
        quant: dict[str, int] | None,
        fingerprint: str,
        projections: tuple[str, ...] = (),
        biased: bool = False,
        hf_names: dict[str, list[Source]] | None = None,
    ) -> None:
        self.root = root
        self.config = config
        self.family = family
        self.tensors = tensors
        self.blocks = blocks
        self.top_k = top_k
        self.num_experts = num_experts
        self.proj_shapes = proj_shapes  # mlx projection -> full-precision (out, in)
        self.layout = layout  # "hf" (per-expert tensors) or "stacked" (mlx switch_mlp)
        self.quant = quant  # {"bits", "group_size"} of a quantized stacked source, else None
        self.fingerprint = fingerprint
        self.projections = projections or family.mlx_projections  # mlx names, on-disk order
        self.biased = biased  # each projection has a per-expert `.bias` (gpt_oss)
        # HF layout: stacked target -> per-expert source names, from mlx-lm's sanitize (None:
        # the family's table names them).
        self.hf_names = hf_names
        self._expert_names: set[str] = set()
        for b in blocks:
            for e in range(num_experts):
                self._expert_names.update(p.ref.name for p in self.expert_parts(b, e))

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def parts(self) -> tuple[str, ...]:
        parts = ("weight", "scales", "biases") if self.quant else ("weight",)
        return (*parts, "bias") if self.biased else parts

    @property
    def dtype(self) -> str:
        """Float dtype of the expert weights (of the scales when the source is quantized)."""
        b = self.blocks[0]
        part = "scales" if self.quant else "weight"
        return self.expert_parts(b, 0, parts=(part,))[0].ref.dtype

    def expert_parts(
        self, block: MoeBlock, expert: int, parts: tuple[str, ...] | None = None
    ) -> list[ExpertPart]:
        """One expert's tensors in mlx projection order (gate, up, down), weight/scales/biases."""
        out = []
        for proj in self.projections:
            for part in parts or self.parts:
                if self.layout == "hf" and self.hf_names is not None:
                    src = hf_source(self.hf_names, block, expert, proj, part, f"{self.root}: ")
                    ref = self.tensors[src.name]
                    out.append(ExpertPart(f"{proj}.{part}", ref, src.index, src.view))
                elif self.layout == "hf":
                    key = self.hf_key(block, expert, proj, part)
                    out.append(ExpertPart(f"{proj}.{part}", self.tensors[key], None))
                else:
                    key = block.stacked_key(proj, part)
                    out.append(ExpertPart(f"{proj}.{part}", self.tensors[key], expert))
        return out

    def hf_key(self, block: MoeBlock, expert: int, proj: str, part: str = "weight") -> str:
        """Source name of one expert's tensor in an HF per-expert checkpoint."""
        return hf_key(self.family, self.hf_names, block, expert, proj, part)

    def dense_names(self) -> list[str]:
        """Every tensor that is not a routed expert's, in file then offset order."""
        refs = [r for n, r in self.tensors.items() if n not in self._expert_names]
        refs.sort(key=lambda r: (str(r.file), r.offset))
        return [r.name for r in refs]

    def read(self, part: ExpertPart | TensorRef) -> bytes:
        """Raw bytes of a tensor or of one expert's slice of a stacked tensor."""
        if isinstance(part, TensorRef):
            ref, start, n = part, part.offset, part.nbytes
        else:
            ref, n = part.ref, part.slab_nbytes
            start = ref.offset + (0 if part.index is None else part.index * n)
        with open(ref.file, "rb") as f:
            f.seek(start)
            data = f.read(n)
        if len(data) != n:
            raise CheckpointError(
                f"{ref.file}: tensor {ref.name} is truncated ({len(data)} of {n} bytes); "
                "re-download or re-convert the checkpoint"
            )
        if isinstance(part, ExpertPart) and part.view is not None:
            # A fused HF tensor: cut this expert's part out of its slab (one slab in RAM).
            slab = np.frombuffer(data, dtype=np_dtype(ref.dtype)).reshape(part.slab_shape)
            return part.view.apply(slab).tobytes()
        return data


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Validate config, weights and every expert tensor of a checkpoint dir; read no data."""
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise CheckpointError(f"{root}: is not a directory; a checkpoint is a directory")
    if not root.is_dir():
        raise CheckpointError(f"{root}: no such checkpoint directory")
    config, config_bytes = _load_config(root)
    family = family_for(config, source=str(root / "config.json"))
    check_model_config(config, family, root / "config.json")
    if family.has_hf_names:  # families synth writes: their config keys are known
        check_config(root, config, family)
    files, index_bytes = _weight_files(root)
    tensors: dict[str, TensorRef] = {}
    h = hashlib.sha256(config_bytes + index_bytes)
    for file in files:
        header, data_start, raw = read_safetensors_header(file)
        size = file.stat().st_size
        h.update(file.name.encode() + raw + str(size).encode())
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            if data_start + end > size:
                raise CheckpointError(
                    f"{file}: tensor {name} runs past the end of the file (truncated shard?)"
                )
            tensors[name] = TensorRef(
                name, file, data_start + begin, end - begin, tuple(info["shape"]), info["dtype"]
            )

    try:
        skeleton = build_skeleton(config, source=str(root / "config.json"))
    except CheckpointError:
        raise
    except Exception as e:  # mlx-lm's constructors assume a sane config; any failure is its
        raise CheckpointError(
            f"{root / 'config.json'}: inconsistent model config ({type(e).__name__}: {e})"
        ) from None
    found = moe_blocks(skeleton)
    if not found:
        raise CheckpointError(f"{root / 'config.json'}: the model has no MoE layers")
    blocks = [MoeBlock(layer, p, expert_attr(b)) for layer, p, b in found]
    first = found[0][2]
    top_k = get_top_k(first)
    experts = first[blocks[0].experts]
    projections = projections_of(experts)
    biased = "bias" in experts[projections[0]]
    shapes: dict[str, tuple[int, int]] = {}
    num_experts = 0
    for proj in projections:
        w = experts[proj]["weight"]  # lazy (E, out, in); shape only, no eval
        num_experts, out_dim, in_dim = w.shape
        shapes[proj] = (out_dim, in_dim)

    stacked = blocks[0].stacked_key(projections[0]) in tensors
    hf_names = None
    if not stacked and not family.has_hf_names:
        # No table for this family: mlx-lm's sanitize says which source tensor is which.
        shapes_of = {n: r.shape for n, r in tensors.items()}
        per = expert_candidates(shapes_of, num_experts)
        candidates = set(per)
        if not per:
            raise CheckpointError(
                f"{root}: no stacked expert tensor {blocks[0].stacked_key(projections[0])} and "
                "no HF expert tensors (`...experts...`); is this a checkpoint of the model "
                "config.json describes?"
            )
        parts = ("weight", "bias") if biased else ("weight",)
        targets = [b.stacked_key(p, part) for b in blocks for p in projections for part in parts]
        hf_names = sanitize_map(
            skeleton,
            {n: shapes_of[n] for n in per},
            targets,
            num_experts,
            str(root),
            {n: s for n, s in shapes_of.items() if n not in candidates},
        )
    quant = _quantization(root, config) if stacked else None
    layout = "stacked" if stacked else "hf"
    check_experts(
        root, tensors, blocks, num_experts, shapes, layout, quant, family, biased, hf_names
    )
    check_no_extra_experts(root, tensors, blocks, num_experts, family.num_experts_key)
    return Checkpoint(
        root,
        config,
        family,
        tensors,
        blocks,
        top_k,
        num_experts,
        shapes,
        layout,
        quant,
        h.hexdigest(),
        projections,
        biased,
        hf_names,
    )


def _load_config(root: Path) -> tuple[dict[str, Any], bytes]:
    cpath = root / "config.json"
    if not cpath.is_file():
        raise CheckpointError(
            f"{cpath}: missing; a checkpoint dir needs the model's config.json next to its weights"
        )
    raw = cpath.read_bytes()
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{cpath}: not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{cpath}: must be a JSON object")
    if not isinstance(config.get("model_type", ""), str):
        raise CheckpointError(f"{cpath}: key 'model_type' must be a string")
    return config, raw


def _weight_files(root: Path) -> tuple[list[Path], bytes]:
    index = root / INDEX
    if index.is_file():
        raw = index.read_bytes()
        try:
            weight_map = json.loads(raw)["weight_map"]
            if not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError("weight_map values must be file names")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from e
        files = sorted({root / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: names shard(s) that are missing: {', '.join(missing)}")
        return files, raw
    files = sorted(root.glob("*.safetensors"))
    if files:
        return files, b""
    pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{root}: only pickle weights found ({', '.join(pickles[:3])}); pickle files can run "
            "arbitrary code, so only safetensors are read - convert the checkpoint to "
            "safetensors first"
        )
    raise CheckpointError(f"{root}: no *.safetensors weight files found")


def _quantization(root: Path, config: dict[str, Any]) -> dict[str, int] | None:
    q = config.get("quantization") or config.get("quantization_config")
    if q is None:
        return None
    try:
        bits, gs = int(q["bits"]), int(q["group_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{root / 'config.json'}: key 'quantization' needs integer bits and group_size ({e!r})"
        ) from e
    if q.get("mode", "affine") != "affine":
        raise CheckpointError(
            f"{root / 'config.json'}: quantization mode {q.get('mode')!r} is not supported "
            "(only MLX affine); pack from the full-precision checkpoint"
        )
    return {"bits": bits, "group_size": gs}
