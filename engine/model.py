"""Model assembly: mlx-lm's architecture with every stacked expert block made a streaming one.

mlx-lm builds the skeleton from the store's config.json and loads the non-expert weights with
its own `load_model` (sanitize, quantization, strict key check); our model class only swaps each
stacked expert module (SwitchGLU/SwitchMLP, whatever its attribute name) for a parameterless
StreamingSwitchGLU carrying the module's own activation before the weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.utils import load_model

from engine.errors import ConfigError, StoreError
from engine.families import (
    Family,
    experts_count,
    family_for,
    get_experts,
    model_classes,
    moe_blocks,
    projections_of,
    set_experts,
)
from engine.pagecache import evict
from engine.procstats import available_ram_bytes
from engine.store import Store
from engine.streaming import StreamingSwitchGLU

MATERIALIZE_BYTES = 64 << 20  # dense weights read between page-cache drops while loading


def streaming_twin(
    layer: int, orig: nn.Module, quant: tuple[int, int] | None
) -> StreamingSwitchGLU:
    """A parameterless streaming block computing what the stacked module `orig` computes."""
    block = StreamingSwitchGLU(layer, orig.activation, quant, projections_of(orig))
    block._num_experts = experts_count(orig)  # plain attribute: not a parameter to load
    return block


def _streaming_classes(quant: tuple[int, int] | None):
    """A `get_model_classes` for mlx-lm's load_model that returns a streaming subclass."""

    def get_classes(config: dict[str, Any]) -> tuple[type, type]:
        model_cls, args_cls = model_classes(config)

        class StreamingModel(model_cls):  # type: ignore[misc, valid-type]
            def __init__(self, args: Any) -> None:
                super().__init__(args)
                for layer, _path, block in moe_blocks(self):
                    set_experts(block, streaming_twin(layer, get_experts(block), quant))

        StreamingModel.__name__ = f"Streaming{model_cls.__name__}"
        return StreamingModel, args_cls

    return get_classes


def load_streaming_model(
    store: Store, dtype: mx.Dtype | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The store's model with streaming expert blocks (unbound: call `bind`), cast to dtype."""
    quant = None if store.bits >= 16 else (store.bits, int(store.group_size or 64))
    dense = store.dense_dir
    if not (dense / "config.json").is_file():
        raise StoreError(f"{dense / 'config.json'}: missing; re-pack the store")
    try:
        model, config = load_model(
            Path(dense), lazy=True, strict=True, get_model_classes=_streaming_classes(quant)
        )
        _materialize(model, sorted(dense.glob("*.safetensors")))
    except ValueError as e:
        raise StoreError(f"{dense}: non-expert weights do not fit the model ({e})") from e
    if dtype is not None:
        model.set_dtype(dtype)  # floating params only; quantized weights stay packed
    layers = tuple(layer for layer, _, _ in moe_blocks(model))
    if layers != store.moe_layers:
        raise StoreError(
            f"{store.root}: the model has MoE layers {layers} but the store has experts for "
            f"{store.moe_layers}; re-pack the store"
        )
    return model, config


def _materialize(model: nn.Module, files: list[Path]) -> None:
    """Read the (lazily loaded) dense weights ~MATERIALIZE_BYTES at a time, dropping the files'
    pages from the page cache after each batch: loading holds the weights once (in RSS), not
    twice (RSS + their file pages), which a memory budget sampled from outside counts."""
    batch: list[mx.array] = []
    size = 0
    for _, a in tree_flatten(model.parameters()):
        batch.append(a)
        size += a.nbytes
        if size >= MATERIALIZE_BYTES:
            mx.eval(batch)
            for f in files:
                evict(f)
            batch, size = [], 0
    mx.eval(batch)
    for f in files:
        evict(f)


def streaming_blocks(model: nn.Module) -> list[StreamingSwitchGLU]:
    return [get_experts(block) for _, _, block in moe_blocks(model)]


def set_experts_per_token(model: nn.Module, family: Family, k: int, num_experts: int) -> None:
    """The experts_per_token knob: top-k of every MoE block (the family renormalises as usual)."""
    if not 1 <= k <= num_experts:
        raise ConfigError(f"experts_per_token must be in 1..{num_experts} for this model, got {k}")
    for _, _, block in moe_blocks(model):
        family.set_top_k(block, k)


def model_top_k(model: nn.Module, family: Family) -> int:
    return family.get_top_k(moe_blocks(model)[0][2])


def routers(model: nn.Module, family: Family) -> dict[int, Any]:
    """MoE layer -> its routing scores for hidden states x (T, D): (T, E) numpy."""
    return {layer: family.router(block) for layer, _, block in moe_blocks(model)}


def family_of(store: Store) -> Family:
    return family_for(store.config, source=str(store.dense_dir / "config.json"))


def load_reference(model_dir: Path, dtype: mx.Dtype | None = mx.float32) -> nn.Module:
    """mlx-lm's own in-memory model of a checkpoint, cast like the engine computes."""
    model, _ = load_model(Path(model_dir), lazy=False, strict=True)
    if dtype is not None:
        model.set_dtype(dtype)
    return model


# The in-memory model may take half of the RAM available: the rest is this process, the page
# cache its loading fills, and whatever else the machine runs.
RAM_SHARE = 0.5


def in_memory_bytes(model_dir: Path) -> int:
    """RAM load_reference's float32 model of a checkpoint takes (pack's calibration loads the
    same): 16-bit weights double, quantized (mlx-community) ones stay as stored."""
    model_dir = Path(model_dir)
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    quantized = "quantization" in config or "quantization_config" in config
    return size if quantized else 2 * size


def fits_in_memory(model_dir: Path) -> str | None:
    """None when load_reference(model_dir) fits in RAM_SHARE of the RAM available now, else
    why not (one line, in GB)."""
    need = in_memory_bytes(model_dir)
    avail = available_ram_bytes() or 0
    if need <= RAM_SHARE * avail:
        return None
    return f"in memory it needs {need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available"


def compute_dtype(name: str) -> mx.Dtype | None:
    return mx.float32 if name == "float32" else None
