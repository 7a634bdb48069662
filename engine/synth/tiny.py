"""A tiny synthetic checkpoint for any mlx-lm MoE family, in mlx-community layout.

The model is mlx-lm's own, built from a small config (engine/synth/data/tiny_families.toml: only
what the family's ModelArgs needs beyond a shared base); its weights are mlx-lm's seeded random
init, except the planted ones (`engine.synth.routing`): embedding, lm_head and every router get
the routing structure (popularity skew, topic runs, cross-layer predictability) where their
shapes allow. The saved tensors are the model's own parameter names with stacked experts, which
is exactly what `mlx_lm convert` writes, so pack reads them with no per-family key table. The
families with known HF per-expert names are written in HF layout by `engine.synth.hf` instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import tomli_w
from mlx.utils import tree_flatten

from engine import contract
from engine.errors import CheckpointError, StoreExists, UnsupportedModel
from engine.families import _router, build_skeleton, experts_count, get_experts, moe_blocks
from engine.synth.hf import probe_suite, write_tokenizer
from engine.synth.routing import RoutingKnobs, RoutingPlan

E, K, H, V = 8, 2, 64, 256  # experts, top-k, hidden, vocab: tiny, and 64 fits every quant group
CONFIGS = contract.TINY_FAMILIES_FILE


def _tables() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(base keys, per-family keys) from the data file; `nulls` become None (TOML has none)."""
    doc = tomllib.loads(CONFIGS.read_text())

    def table(t: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in t.items() if k != "nulls"}
        return out | dict.fromkeys(t.get("nulls", []))

    return table(doc["base"]), {f: table(t) for f, t in doc["families"].items()}


BASE, TINY = _tables()
assert (BASE["hidden_size"], BASE["vocab_size"], BASE["num_experts"]) == (H, V, E), CONFIGS


def synth_families() -> tuple[str, ...]:
    return tuple(TINY)


def make_config(family: str, seed: int = 0) -> dict[str, Any]:
    if family not in TINY:
        raise UnsupportedModel(
            f"no tiny config for family {family!r}; choose one of {', '.join(TINY)}"
        )
    extra = dict(TINY[family])
    nested = extra.pop("nested", None)
    text = {"model_type": nested or family, **BASE, **extra}
    if nested is not None:
        cfg: dict[str, Any] = {"model_type": family, "text_config": text}
        cfg["tie_word_embeddings"] = False
    else:
        cfg = text
    cfg["synth"] = {"family": family, "preset": "tiny", "seed": seed, "layout": "mlx"}
    return cfg


def _plant(model: nn.Module, plan: RoutingPlan) -> None:
    """Embedding, lm_head and routers carry the planted routing where the shapes fit."""
    params = dict(tree_flatten(model.parameters()))
    updates: list[tuple[str, mx.array]] = []
    for name, arr in params.items():
        if name.endswith("embed_tokens.weight") and arr.shape == (plan.vocab, plan.hidden):
            updates.append((name, mx.array(plan.embedding())))
        elif name.endswith("lm_head.weight") and arr.shape == (plan.vocab, plan.hidden):
            updates.append((name, mx.array(plan.lm_head())))
    model.load_weights(updates, strict=False)
    for layer, _, block in moe_blocks(model):
        router = _router(block, experts_count(get_experts(block)))
        if router["weight"].shape == (plan.num_experts, plan.hidden):
            router.weight = mx.array(plan.router(layer))


def build_model(family: str, seed: int = 0) -> tuple[nn.Module, dict[str, Any]]:
    """mlx-lm's model for the family's tiny config, seeded, routing planted; and the config."""
    config = make_config(family, seed)
    mx.random.seed(seed)
    model = build_skeleton(config, source=f"tiny {family} config")
    plan = RoutingPlan(hidden=H, vocab=V, num_experts=E, seed=seed, knobs=RoutingKnobs())
    _plant(model, plan)
    mx.eval(model.parameters())
    return model, config


def synthesize(
    out: Path,
    family: str,
    seed: int = 0,
    force: bool = False,
    bits: int = 16,
    layout: str = "mlx",
) -> Path:
    """Write the tiny checkpoint atomically to `out`, with tokenizer and probe suite: layout
    "mlx" (mlx-community: stacked experts; `bits` < 16 quantizes it the way `mlx_lm convert
    -q` does) or "hf" (the family's HF expert tensors, where engine.synth.to_hf knows them)."""
    from mlx_lm.utils import quantize_model

    from engine.synth.to_hf import to_hf

    if layout not in ("mlx", "hf") or (layout == "hf" and bits < 16):
        raise CheckpointError(
            f"layout must be 'mlx' or 'hf' (16-bit only), got {layout!r} at {bits} bits"
        )
    out = Path(out)
    if out.exists() and not force:
        raise StoreExists(f"{out}: already exists; pass --force to replace it")
    model, config = build_model(family, seed)
    if bits < 16:
        model, config = quantize_model(model, config, group_size=64, bits=bits)
    weights = dict(tree_flatten(model.parameters()))
    if not any(
        n.endswith(("switch_mlp.up_proj.weight", "experts.up_proj.weight", "switch_mlp.fc1.weight"))
        for n in weights
    ):
        raise CheckpointError(f"tiny {family} config: the model has no stacked experts to stream")
    if layout == "hf":
        weights = to_hf(weights, family)
    plan = RoutingPlan(hidden=H, vocab=V, num_experts=E, seed=seed, knobs=RoutingKnobs())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), weights, metadata={"format": "mlx"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        suite = probe_suite(plan, "tiny", seed)
        (tmp / "probe_suite.toml").write_bytes(tomli_w.dumps(suite).encode())
        write_tokenizer(tmp, V)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# Every family `engine synth` builds (HF layout for engine.synth's, mlx layout for the rest):
# engine/contract.py reads them from the same data file without importing MLX.
SYNTH_FAMILIES = contract.SYNTH_FAMILIES


def synthesize_family(
    out: Path,
    family: str,
    preset: str = "tiny",
    seed: int = 0,
    force: bool = False,
    knobs: RoutingKnobs | None = None,
    progress: bool | None = None,
    layout: str | None = None,
    *,
    layers: int | None = None,
    quantize: int | None = None,
    group_size: int = 64,
) -> Path:
    """`engine.synth.hf.synthesize` for its HF-layout families and real-shape presets (which name
    their family), else the tiny model of this file; layout None = HF for engine.synth.hf's
    families, mlx for the others. layers/quantize/group_size: engine.synth.hf's."""
    from engine.synth import hf as synth

    real = preset in synth.REAL_PRESETS and layout is None  # names its family and layout
    known = family is None or family in synth.SYNTH_FAMILIES
    if real or (known and layout in (None, "hf")):
        return synth.synthesize(
            out,
            family,
            preset,
            seed,
            force,
            knobs,
            progress,
            layers=layers,
            quantize=quantize,
            group_size=group_size,
        )
    if layers is not None or quantize is not None:
        raise CheckpointError(
            f"--layers/--quantize apply to engine/synth/hf.py's presets, not to family {family!r}"
        )
    if family is None:
        raise CheckpointError("--family is needed with a toy preset")
    if preset != "tiny":
        raise CheckpointError(
            f"family {family!r} is synthesized at preset 'tiny' only, not {preset!r}; "
            f"presets come with the HF-layout families ({', '.join(synth.SYNTH_FAMILIES)})"
        )
    return synthesize(out, family, seed=seed, force=force, layout=layout or "mlx")
