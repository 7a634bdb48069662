"""Checkpoint validation: every expert tensor present, float, shaped as config.json says.

Split from `engine.checkpoint` (which opens and reads checkpoints) so each file does one job;
errors name the file, tensor, layer and expert, and say what to do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import CheckpointError
from engine.families import Family

if TYPE_CHECKING:
    from engine.checkpoint import MoeBlock, TensorRef
    from engine.hf_experts import Source

FLOAT_DTYPES = ("bfloat16", "float16", "float32")


def check_config(root: Path, config: dict[str, Any], family: Family) -> None:
    """Catch the inconsistencies mlx-lm would turn into an obscure shape error later."""
    src = root / "config.json"
    keys = ("hidden_size", "num_hidden_layers", "vocab_size", family.num_experts_key)
    for key in (*keys, "num_experts_per_tok"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{src}: key {key!r} must be a positive integer, got {value!r}")
    if config["num_experts_per_tok"] > config[family.num_experts_key]:
        raise CheckpointError(
            f"{src}: key 'num_experts_per_tok' ({config['num_experts_per_tok']}) exceeds "
            f"{family.num_experts_key!r} ({config[family.num_experts_key]})"
        )


def check_experts(
    root: Path,
    tensors: dict[str, TensorRef],
    blocks: list[MoeBlock],
    num_experts: int,
    shapes: dict[str, tuple[int, int]],
    layout: str,
    quant: dict[str, int] | None,
    family: Family,
    biased: bool,
    hf_names: dict[str, list[Source]] | None,
) -> None:
    """Every expert tensor present, float, and shaped as the config says; errors name it."""
    config = json.loads((root / "config.json").read_text())
    qconfig = config.get("quantization") or {}
    for b in blocks:
        for proj in shapes:
            out_dim, in_dim = shapes[proj]
            if layout == "hf":
                for e in range(num_experts):
                    if hf_names is not None:  # mapped by sanitize: check the cut's shape
                        src = hf_source(hf_names, b, e, proj, where=f"{root}: ")
                        ref = tensors[src.name]
                        slab = ref.shape[1:] if src.index is not None else ref.shape
                        got = slab if src.view is None else src.view.shape(slab)
                        if got != (out_dim, in_dim):
                            raise CheckpointError(
                                f"{root}: layer {b.layer} expert {e} projection {proj}: "
                                f"{src.name} gives shape {list(got)}, expected "
                                f"{[out_dim, in_dim]} from config.json"
                            )
                        continue
                    key = hf_key(family, hf_names, b, e, proj)
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
                _check_uniform_quant(root, qconfig, f"{b.path}.{b.experts}", proj, bits, gs)
                groups = (num_experts, out_dim, in_dim // gs)
                expected = {
                    "weight": ((num_experts, out_dim, in_dim * bits // 32), ("uint32",)),
                    "scales": (groups, FLOAT_DTYPES),
                    "biases": (groups, FLOAT_DTYPES),
                }
            if biased:
                expected["bias"] = ((num_experts, out_dim), FLOAT_DTYPES)
            for part, (shape, dtypes) in expected.items():
                key = b.stacked_key(proj, part)
                ref = tensors.get(key)
                if ref is None:
                    raise CheckpointError(
                        f"{root}: layer {b.layer} projection {proj}: stacked tensor {key} is "
                        "missing from the checkpoint"
                    )
                _expect(ref, shape, dtypes)


def check_no_extra_experts(
    root: Path,
    tensors: dict[str, TensorRef],
    blocks: list[MoeBlock],
    num_experts: int,
    key: str,
) -> None:
    """Experts beyond the config's count would silently land in dense/ and break loading."""
    paths = {b.path for b in blocks}
    for name in tensors:
        m = re.match(r"^(.*)\.experts\.(\d+)\.", name)
        if m and m.group(1) in paths and int(m.group(2)) >= num_experts:
            raise CheckpointError(
                f"{root}: tensor {name} is expert {m.group(2)}, but config.json "
                f"{f'key {key!r} ' if key else ''}says {num_experts} experts; the config does "
                "not match the weights"
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


def hf_source(
    hf_names: dict[str, list[Source]],
    block: MoeBlock,
    expert: int,
    proj: str,
    part: str = "weight",
    where: str = "",
) -> Source:
    """Where one expert's tensor comes from in an HF checkpoint mapped by mlx-lm's sanitize."""
    sources = hf_names.get(block.stacked_key(proj, part))
    if sources is None:
        raise CheckpointError(
            f"{where}layer {block.layer} projection {proj}: no source tensors make "
            f"{block.stacked_key(proj, part)} (mlx-lm's sanitize built none); the checkpoint "
            "lacks this layer's experts or names them in a way this family does not"
        )
    return sources[expert]


def hf_key(
    family: Family,
    hf_names: dict[str, list[Source]] | None,
    block: MoeBlock,
    expert: int,
    proj: str,
    part: str = "weight",
) -> str:
    """Source name of one expert's tensor in an HF checkpoint (table or sanitize mapping)."""
    if hf_names is None:
        return family.hf_expert_key(block.path, expert, proj, part)
    return hf_source(hf_names, block, expert, proj, part).name
