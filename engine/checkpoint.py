"""Open a source checkpoint (HF per-expert or mlx-community stacked) and read it tensor by tensor.

Only safetensors are read, and only through their header: a tensor is (file, offset, nbytes), so
`read` returns its raw bytes (bit-exact, bf16 included) and RAM stays bounded by one tensor.
Everything is validated up front so a pack fails before it writes, naming what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import CheckpointError
from engine.families import Family, build_skeleton, family_for, moe_blocks
from engine.modelconfig import check_model_config
from engine.stheader import read_safetensors_header

# safetensors dtype code -> (store dtype name, itemsize); store names are engine.store's keys.
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BF16": ("bfloat16", 2),
    "F16": ("float16", 2),
    "F32": ("float32", 4),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
}
FLOAT_DTYPES = ("bfloat16", "float16", "float32")
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

    name: str  # "<mlx projection>.<weight|scales|biases>"
    ref: TensorRef
    index: int | None  # None: the whole tensor is this expert's; else a slice of a stacked tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ref.shape if self.index is None else self.ref.shape[1:]

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes if self.index is None else self.ref.nbytes // self.ref.shape[0]


@dataclass(frozen=True)
class MoeBlock:
    layer: int
    path: str  # mlx-lm dotted path, e.g. model.layers.3.mlp


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
        self._expert_names: set[str] = set()
        for b in blocks:
            for e in range(num_experts):
                self._expert_names.update(p.ref.name for p in self.expert_parts(b, e))

    @property
    def model_type(self) -> str:
        return self.family.model_type

    @property
    def parts(self) -> tuple[str, ...]:
        return ("weight", "scales", "biases") if self.quant else ("weight",)

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
        for proj in self.family.mlx_projections:
            for part in parts or self.parts:
                if self.layout == "hf":
                    key = self.family.hf_expert_key(block.path, expert, proj, part)
                    out.append(ExpertPart(f"{proj}.{part}", self.tensors[key], None))
                else:
                    key = self.family.stacked_key(block.path, proj, part)
                    out.append(ExpertPart(f"{proj}.{part}", self.tensors[key], expert))
        return out

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
            ref, n = part.ref, part.nbytes
            start = ref.offset + (0 if part.index is None else part.index * n)
        with open(ref.file, "rb") as f:
            f.seek(start)
            data = f.read(n)
        if len(data) != n:
            raise CheckpointError(
                f"{ref.file}: tensor {ref.name} is truncated ({len(data)} of {n} bytes); "
                "re-download or re-convert the checkpoint"
            )
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
    blocks = [MoeBlock(layer, p) for layer, p, _ in found]
    first = found[0][2]
    top_k = family.get_top_k(first)
    shapes: dict[str, tuple[int, int]] = {}
    num_experts = 0
    for proj in family.mlx_projections:
        w = first["switch_mlp"][proj]["weight"]  # lazy (E, out, in); shape only, no eval
        num_experts, out_dim, in_dim = w.shape
        shapes[proj] = (out_dim, in_dim)

    stacked = any(".switch_mlp." in n for n in tensors)
    quant = _quantization(root, config) if stacked else None
    layout = "stacked" if stacked else "hf"
    _check_experts(root, config, tensors, blocks, num_experts, shapes, layout, quant)
    _check_no_extra_experts(root, config, tensors, blocks, num_experts)
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


def _check_experts(
    root: Path,
    config: dict[str, Any],
    tensors: dict[str, TensorRef],
    blocks: list[MoeBlock],
    num_experts: int,
    shapes: dict[str, tuple[int, int]],
    layout: str,
    quant: dict[str, int] | None,
) -> None:
    """Every expert tensor present, float, and shaped as the config says; errors name it."""
    family = family_for(config)
    qconfig = config.get("quantization") or {}
    for b in blocks:
        for proj in family.mlx_projections:
            out_dim, in_dim = shapes[proj]
            if layout == "hf":
                for e in range(num_experts):
                    key = family.hf_expert_key(b.path, e, proj)
                    ref = tensors.get(key)
                    if ref is None:
                        raise CheckpointError(
                            f"{root}: layer {b.layer} expert {e} projection {proj}: tensor {key} "
                            "is missing from the checkpoint"
                        )
                    _expect(ref, (out_dim, in_dim), FLOAT_DTYPES)
                continue
            expected: dict[str, tuple[tuple[int, ...], tuple[str, ...]]]
            if quant is None:
                expected = {"weight": ((num_experts, out_dim, in_dim), FLOAT_DTYPES)}
            else:
                bits, gs = quant["bits"], quant["group_size"]
                _check_uniform_quant(root, qconfig, b.path, proj, bits, gs)
                groups = (num_experts, out_dim, in_dim // gs)
                expected = {
                    "weight": ((num_experts, out_dim, in_dim * bits // 32), ("uint32",)),
                    "scales": (groups, FLOAT_DTYPES),
                    "biases": (groups, FLOAT_DTYPES),
                }
            for part, (shape, dtypes) in expected.items():
                key = family.stacked_key(b.path, proj, part)
                ref = tensors.get(key)
                if ref is None:
                    raise CheckpointError(
                        f"{root}: layer {b.layer} projection {proj}: stacked tensor {key} is "
                        "missing from the checkpoint"
                    )
                _expect(ref, shape, dtypes)


def _check_no_extra_experts(
    root: Path,
    config: dict[str, Any],
    tensors: dict[str, TensorRef],
    blocks: list[MoeBlock],
    num_experts: int,
) -> None:
    """Experts beyond the config's count would silently land in dense/ and break loading."""
    paths = {b.path for b in blocks}
    key = family_for(config).num_experts_key
    for name in tensors:
        m = re.match(r"^(.*)\.experts\.(\d+)\.", name)
        if m and m.group(1) in paths and int(m.group(2)) >= num_experts:
            raise CheckpointError(
                f"{root}: tensor {name} is expert {m.group(2)}, but config.json key {key!r} "
                f"says {num_experts} experts; the config does not match the weights"
            )


def _check_uniform_quant(
    root: Path, qconfig: dict[str, Any], block: str, proj: str, bits: int, gs: int
) -> None:
    """mlx-lm mixed recipes may quantize some expert projections differently; a store has one
    expert layout, so those are refused rather than mis-read."""
    over = qconfig.get(f"{block}.switch_mlp.{proj}")
    if isinstance(over, dict) and (over.get("bits"), over.get("group_size")) != (bits, gs):
        raise CheckpointError(
            f"{root / 'config.json'}: key 'quantization' gives {block}.switch_mlp.{proj} "
            f"{over.get('bits')} bits / group {over.get('group_size')}, unlike the other experts; "
            "mixed expert quantization is not supported - pack from the full-precision checkpoint"
        )


def _expect(ref: TensorRef, shape: tuple[int, ...], dtypes: tuple[str, ...]) -> None:
    if ref.shape != shape:
        raise CheckpointError(
            f"{ref.file.name}: tensor {ref.name} has shape {list(ref.shape)}, expected "
            f"{list(shape)} from config.json"
        )
    if ref.dtype not in dtypes:
        raise CheckpointError(
            f"{ref.file.name}: tensor {ref.name} has dtype {ref.st_dtype}, expected one of "
            f"{', '.join(dtypes)}"
        )
