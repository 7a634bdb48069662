"""HF layout for a synthetic mlx-layout checkpoint: the routed experts as HF stores them.

How each family's HF checkpoints hold their experts is data (`[hf.X]` in
engine/synth/data/tiny_families.toml: per-expert tensors under HF's projection names, or gate and up
fused into one (E, 2I, D) or (E, D, 2I) tensor); this file only applies it. The inverse, HF to
stacked, is mlx-lm's own sanitize, which pack asks (`engine.hf_experts`), so a written HF
checkpoint is checked by mlx-lm loading it.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import mlx.core as mx

from engine import contract
from engine.errors import UnsupportedModel

CONFIGS = contract.TINY_FAMILIES_FILE
_STACKED = re.compile(
    r"^(.*)\.(?:switch_mlp|experts)\.(gate_proj|up_proj|down_proj)\.(weight|bias)$"
)


def hf_layouts() -> dict[str, dict[str, Any]]:
    return tomllib.loads(CONFIGS.read_text()).get("hf", {})


def to_hf(weights: dict[str, mx.array], family: str) -> dict[str, mx.array]:
    """mlx-layout tensors (stacked experts) -> the family's HF tensors."""
    spec = hf_layouts().get(family)
    if spec is None:
        raise UnsupportedModel(
            f"HF key names of {family!r} are not known to synth; write it with layout 'mlx' "
            f"(HF layout for: {', '.join(sorted(hf_layouts()))})"
        )
    out: dict[str, mx.array] = {}
    fused: dict[str, dict[str, mx.array]] = {}
    for name, a in weights.items():
        m = _STACKED.match(name)
        if m is None:
            out[name] = a
            continue
        block, proj, part = m.groups()
        if spec["experts"] == "per_expert":
            hf = spec.get("names", {}).get(proj, proj)
            for e in range(a.shape[0]):
                out[f"{block}.experts.{e}.{hf}.{part}"] = a[e]
        else:
            fused.setdefault(block, {})[f"{proj}.{part}"] = a
    for block, t in fused.items():
        gate, up, down = t["gate_proj.weight"], t["up_proj.weight"], t["down_proj.weight"]
        if spec["experts"] == "fused_cols":  # stored transposed: (E, in, out)
            gate, up, down = gate.swapaxes(1, 2), up.swapaxes(1, 2), down.swapaxes(1, 2)
        axis = -1 if spec["experts"] == "fused_cols" else -2
        out[f"{block}.experts.gate_up_proj"] = mx.concatenate([gate, up], axis=axis)
        out[f"{block}.experts.down_proj"] = down
    for old, new in spec.get("rename", []):
        out = {(new + n[len(old) :] if n.startswith(old) else n): a for n, a in out.items()}
    return out
