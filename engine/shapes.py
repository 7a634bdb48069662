"""Do a store's expert tensors fit the model its config.json describes? (used by `verify`)

mlx-lm builds the model skeleton from the config with lazy parameters (no memory); each stacked
expert weight is (experts, out, in) at full precision, so the manifest's per-expert tensors must
be (out, in) floats, or at `quant.bits` the packed uint32 weight (out, in*bits/32) plus scales
and biases (out, in/group_size).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError, StoreCorrupt
from engine.families import build_skeleton, family_for, moe_blocks
from engine.manifest import FLOAT_DTYPES
from engine.modelconfig import check_model_config

if TYPE_CHECKING:
    from engine.store import Store


def open_for_run(path: str | Path) -> Store:
    """Store.open plus the config-vs-experts check, before a command computes with the store:
    a manifest whose tensor shapes lie would otherwise fail deep inside mlx."""
    from engine.store import Store

    store = Store.open(path)
    problems = expert_shape_problems(store, store.config)
    if problems:
        raise StoreCorrupt(
            f"{store.root}: {problems[0]}; run `moe-engine verify {store.root}` and re-pack"
        )
    return store


def expert_shape_problems(store: Store, config: dict[str, Any]) -> list[str]:
    src = str(store.dense_dir / "config.json")
    try:
        if not isinstance(config.get("model_type"), str):
            return [f"{src}: key 'model_type' must be a string"]
        family = family_for(config, source=src)
        check_model_config(config, family, Path(src))
        blocks = moe_blocks(build_skeleton(config, source=src))
    except EngineError as e:
        return [str(e)]
    except Exception as e:  # mlx-lm's constructors assume sane configs; any failure is ours
        return [f"dense/config.json: cannot build the model ({type(e).__name__}: {e})"]
    out = []
    if family.model_type != store.model_type:
        out.append(
            f"dense/config.json: model_type {family.model_type!r}, manifest says "
            f"{store.model_type!r}"
        )
    layers = tuple(layer for layer, _, _ in blocks)
    if layers != store.moe_layers:
        out.append(f"manifest: experts for layers {store.moe_layers}, the model has {layers}")
    if not blocks:
        return out
    by = {t.name: t for t in store.expert_tensors}
    for proj in family.mlx_projections:
        num, o, i = blocks[0][2]["switch_mlp"][proj]["weight"].shape
        if num != store.num_experts:
            out.append(f"manifest: num_experts {store.num_experts}, the model has {num}")
        want: dict[str, tuple[tuple[int, ...], tuple[str, ...]]]
        if store.bits >= 16:
            want = {"weight": ((o, i), FLOAT_DTYPES)}
        else:
            g = (o, i // (store.group_size or 1))
            want = {
                "weight": ((o, i * store.bits // 32), ("uint32",)),
                "scales": (g, FLOAT_DTYPES),
                "biases": (g, FLOAT_DTYPES),
            }
        for part, (shape, dtypes) in want.items():
            t = by.get(f"{proj}.{part}")
            if t is None:
                out.append(f"manifest: expert tensor {proj}.{part} is missing")
            elif t.shape != shape or t.dtype not in dtypes:
                out.append(
                    f"manifest: expert tensor {proj}.{part} is {list(t.shape)} {t.dtype}, the "
                    f"model at {store.bits} bits needs {list(shape)} {'/'.join(dtypes)}"
                )
    return out
