"""`python -m engine families`: every mlx-lm model type with a stacked-expert layer, and ours.

A model type has stacked experts when its mlx-lm module uses `switch_layers` itself or imports a
model module that does (qwen3_5_moe -> qwen3_5 -> qwen3_next). The scan reads the installed
mlx-lm's sources, so a newer mlx-lm's families show up without a code change. A family streams
(tested) when `engine.synth.tiny` can build it and the parity suite covers it; the others
say why not.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

# Why a family that has stacked experts does not stream yet, one line each.
NOT_YET: dict[str, str] = {
    "gemma4_text": "its router sits on the decoder layer, not on the block owning the experts "
    "(Experts.switch_glu), so top-k and router scores need family code",
    "gemma4": "multimodal wrapper of gemma4_text (see there)",
    "qwen3_5": "dense Qwen3.5 (no routed experts); its MoE form is qwen3_5_moe, which streams",
    "deepseek_v41": "not tested yet: no tiny config (its attention's SwitchLinear o_a_proj is "
    "not an expert block and would stay resident)",
    "longcat_flash_ngram": "not tested yet: no tiny config (longcat_flash plus n-gram embeddings; "
    "longcat_flash streams)",
    "minimax_m3_vl": "not tested yet: no tiny config for this vision-language wrapper",
    "kimi_k3": "not tested yet: no tiny config (KDA + MLA text model in a text_config wrapper)",
    "muse_spark": "not tested yet: no tiny config",
    "prism_hadamard_qwen35": "not tested yet: no tiny config (Hadamard-rotated Qwen3.5)",
}
# Multimodal wrappers: mlx-lm builds only their text model (its sanitize drops the vision
# weights), so the text model streams and there is no vision tower to keep resident.
TEXT_ONLY = frozenset({"qwen3_5_moe", "qwen3_vl_moe", "kimi_vl", "kimi_k25", "llama4"})
DEFAULT_REASON = "not tested yet: no tiny config in engine/synth/tiny.py"


def _models_dir() -> Path:
    import mlx_lm.models

    return Path(mlx_lm.models.__file__).parent


@functools.cache
def stacked_expert_types() -> frozenset[str]:
    """mlx-lm model modules whose model holds a SwitchGLU/SwitchMLP (directly or inherited)."""
    root = _models_dir()
    deps: dict[str, set[str]] = {}
    direct: set[str] = set()
    for f in root.glob("*.py"):
        name = f.stem
        if name in ("switch_layers", "__init__"):
            continue
        src = f.read_text()
        if re.search(r"\bSwitch(GLU|MLP)\b", src):
            direct.add(name)
        deps[name] = set(re.findall(r"^\s*from \.(\w+) import", src, re.M))
        deps[name] |= set(re.findall(r"^\s*from \. import (\w+)", src, re.M))
    found = set(direct)
    changed = True
    while changed:
        changed = False
        for name, ds in deps.items():
            if name not in found and ds & found:
                found.add(name)
                changed = True
    return frozenset(found)


def statuses() -> list[tuple[str, bool, str]]:
    """(model type, streams, one-line status) for every stacked-expert model type, sorted."""
    from engine.synth.tiny import synth_families

    tested = set(synth_families())
    out = []
    for name in sorted(stacked_expert_types(), key=str.lower):
        if name in tested:
            status = "streams (tested: greedy parity with mlx-lm float32)"
            if name in TEXT_ONLY:
                status += "; text model only: mlx-lm drops the vision tower"
            out.append((name, True, status))
        else:
            out.append((name, False, NOT_YET.get(name, DEFAULT_REASON)))
    return out


def render() -> str:
    rows = statuses()
    width = max(len(n) for n, _, _ in rows)
    lines = [f"{n:<{width}}  {status}" for n, _, status in rows]
    streams = sum(ok for _, ok, _ in rows)
    lines.append(f"{streams} of {len(rows)} mlx-lm model types with stacked experts stream")
    return "\n".join(lines)
