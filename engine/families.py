"""Which mlx-lm models stream, and the little that differs between MoE families.

Any mlx-lm model whose MoE layers use mlx-lm's stacked expert modules (`SwitchGLU`, `SwitchMLP`,
under any attribute name: `switch_mlp`, `experts`, ...) streams: the modules are found by type,
their projections, biases and activation are read off the module itself, and top-k and router
scores are found on the owning MoE block by the names mlx-lm uses. Checkpoint keys need no table
either: an mlx-community checkpoint's are the model's own parameter names, an HF checkpoint's are
mapped by mlx-lm's own sanitize (`engine.hf_experts`). `FAMILIES` keeps the HF per-expert names
of the five families `engine.synth.hf` writes in HF layout (it needs them to write them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.models.switch_layers import SwitchGLU, SwitchMLP

from engine.cpu_linear import HOST, CpuLinear
from engine.errors import UnsupportedModel
from engine.host_moe import sigmoid
from engine.streaming import GLU_PROJECTIONS, MLP_PROJECTIONS, StreamingSwitchGLU

# Modules that hold a layer's experts: mlx-lm's two stacked layers, and ours once swapped in.
EXPERT_MODULES = (SwitchGLU, SwitchMLP, StreamingSwitchGLU)
# Where mlx-lm's MoE blocks keep top-k, most specific first (a gate module that routes wins
# over a copy on the block that nothing reads, as in dots1).
_TOP_K_ATTRS = (
    "gate.top_k",
    "router.top_k",
    "top_k",
    "num_experts_per_tok",
    "k",  # ernie4_5_moe
    "args.num_experts_per_token",  # kimi_linear reads it from its ModelArgs at call time
)


def _resolve(block: nn.Module, dotted: str) -> tuple[Any, str] | None:
    """(owner, attribute) of a dotted attribute holding an int on block, if it has one."""
    *path, attr = dotted.split(".")
    obj: Any = block
    for p in path:
        # A child module sits in the Module's dict, a config object is a plain attribute.
        child = obj.get(p) if isinstance(obj, dict) else None
        obj = child if child is not None else getattr(obj, p, None)
        if obj is None:
            return None
    value = getattr(obj, attr, None)
    if isinstance(value, int) and not isinstance(value, bool):
        return obj, attr
    return None


def get_top_k(block: nn.Module) -> int:
    for dotted in _TOP_K_ATTRS:
        found = _resolve(block, dotted)
        if found is not None:
            return int(getattr(*found))
    raise UnsupportedModel(
        f"{type(block).__name__}: no top-k attribute ({', '.join(_TOP_K_ATTRS)}) on its MoE block"
    )


def set_top_k(block: nn.Module, k: int) -> None:
    """Every copy is set, so whichever one the family's routing reads sees k."""
    for dotted in _TOP_K_ATTRS:
        found = _resolve(block, dotted)
        if found is not None:
            setattr(*found, k)


def _router(block: nn.Module, num_experts: int) -> nn.Module:
    """The module whose (D -> E) projection routes: the block's gate/router, or a linear inside."""
    # longcat_flash's router also scores its "zero" (identity) experts: more outputs than E.
    for exact in (True, False):
        for name in ("gate", "router"):
            m = block.get(name) if isinstance(block, dict) else None
            if not isinstance(m, nn.Module):
                continue
            for _, sub in [("", m), *m.named_modules()]:
                w = sub.get("weight")
                rows = w.shape[0] if isinstance(w, mx.array) and w.ndim == 2 else 0
                if isinstance(sub, CpuLinear):  # swapped for the CPU kernels: same projection
                    rows = sub.output_dims
                if rows == num_experts or (not exact and rows > num_experts):
                    return sub
    raise UnsupportedModel(f"{type(block).__name__}: no router with {num_experts} outputs")


class BlockRouter:
    """A MoE block's routing scores for hidden states x (T, D) -> (T, E) float32 numpy, found on
    the block once. next_layer prefetch takes their top-k as a guess, so ranking matters, not
    scale (a guess never changes outputs). On the CPU path the router is a CpuLinear and the
    scores are computed on the host: a numpy x costs no MLX evaluation (a guess made through
    MLX took ~0.7 ms a layer, during which the disk could run dry)."""

    def __init__(self, block: nn.Module) -> None:
        self.num_experts = experts_count(get_experts(block), block)
        self.gate = _router(block, self.num_experts)
        # A Linear router is called; deepseek's MoEGate has a bare (E, D) weight.
        self.linear = isinstance(self.gate, nn.Linear | nn.QuantizedLinear | CpuLinear)
        self._bias_of: mx.array | None = None
        for holder in (self.gate, block.get("gate"), block.get("router")):
            bias = holder.get("e_score_correction_bias") if isinstance(holder, nn.Module) else None
            if isinstance(bias, mx.array):  # noaux_tc routing: sigmoid plus a per-expert bias
                self._bias_of = bias
                break
        self._bias: np.ndarray | None = None

    def __call__(self, x: mx.array | np.ndarray) -> np.ndarray:
        gate = self.gate
        weight = None if self.linear else gate["weight"]
        if isinstance(gate, CpuLinear):
            xn = x if isinstance(x, np.ndarray) else HOST.to_host(x)
            s = gate.host(np.ascontiguousarray(xn, np.float32).reshape(-1, xn.shape[-1]))
        elif isinstance(x, np.ndarray) and weight is not None and weight.dtype == mx.float32:
            # a bare float32 router weight (deepseek's MoEGate after the CPU path's cast): a
            # view of MLX's buffer, multiplied by numpy's BLAS (MLX's CPU matmul is ~5x slower)
            s = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False) @ np.asarray(weight).T
        else:
            xm = mx.array(x) if isinstance(x, np.ndarray) else x
            out = gate(xm) if weight is None else xm @ weight.T
            s = np.array(out.astype(mx.float32)).reshape(-1, out.shape[-1])
        if self._bias_of is not None:
            if self._bias is None:  # read once, after the weights are loaded
                self._bias = np.array(self._bias_of.astype(mx.float32))
            s = sigmoid(s) + self._bias
        return s[:, : self.num_experts]  # only real experts can be fetched


@dataclass(frozen=True)
class Family:
    model_type: str
    # mlx-lm projection name -> HF per-expert projection name, in on-disk order; empty for a
    # family engine.synth.hf does not write (its HF names come from mlx-lm's sanitize).
    projections: tuple[tuple[str, str], ...] = ()
    # config.json key holding the number of routed experts (synth writes it; "" if unknown).
    num_experts_key: str = ""
    set_top_k: Callable[[nn.Module, int], None] = set_top_k
    get_top_k: Callable[[nn.Module], int] = get_top_k
    router: Callable[[nn.Module], BlockRouter] = BlockRouter

    @property
    def mlx_projections(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.projections)

    @property
    def has_hf_names(self) -> bool:
        return bool(self.projections)

    def hf_expert_key(
        self, block_path: str, expert: int, mlx_proj: str, part: str = "weight"
    ) -> str:
        """HF name of one expert's tensor, e.g. model.layers.3.mlp.experts.7.gate_proj.weight."""
        names = dict(self.projections)
        if mlx_proj not in names:
            raise UnsupportedModel(
                f"{self.model_type}: HF per-expert key names are not known; convert the "
                "checkpoint with `mlx_lm convert` (stacked experts) and pack that"
            )
        return f"{block_path}.experts.{expert}.{names[mlx_proj]}.{part}"

    def stacked_key(self, block_path: str, mlx_proj: str, part: str = "weight") -> str:
        """mlx-community stacked name, e.g. model.layers.3.mlp.switch_mlp.up_proj.weight."""
        return f"{block_path}.switch_mlp.{mlx_proj}.{part}"


_GLU = tuple(zip(GLU_PROJECTIONS, GLU_PROJECTIONS, strict=True))

# The families engine.synth.hf writes in HF layout (`experts.<e>.<proj>.weight`).
FAMILIES: dict[str, Family] = {
    "qwen3_moe": Family("qwen3_moe", _GLU, "num_experts"),
    "qwen2_moe": Family("qwen2_moe", _GLU, "num_experts"),
    "olmoe": Family("olmoe", _GLU, "num_experts"),
    # Mixtral's HF names are w1 (gate), w3 (up), w2 (down).
    "mixtral": Family(
        "mixtral",
        (("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")),
        "num_local_experts",
    ),
    "deepseek_v3": Family("deepseek_v3", _GLU, "n_routed_experts"),
}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's config: vision-language and multimodal wrappers (qwen3_5_moe,
    llama4, kimi_vl, ...) nest it under `text_config`; its keys win over the wrapper's."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def module_name(model_type: str) -> str:
    """mlx-lm's module for a model_type (it maps a few aliases, e.g. kimi_k2 -> deepseek_v3)."""
    from mlx_lm.utils import MODEL_REMAPPING

    return MODEL_REMAPPING.get(model_type, model_type)


def family_for(config: dict[str, Any], *, source: str = "config.json") -> Family:
    model_type = config.get("model_type")
    if model_type is None:
        raise UnsupportedModel(f"{source}: no 'model_type' key; is this a model config?")
    fam = FAMILIES.get(model_type)
    if fam is not None:
        return fam
    from engine.cli.families import stacked_expert_types

    if module_name(str(model_type)) not in stacked_expert_types():
        raise UnsupportedModel(
            f"{source}: model_type {model_type!r} is not supported: mlx-lm has no stacked-expert "
            "layer for it, so nothing streams; `python -m engine families` lists those that do"
        )
    return Family(str(model_type))


def model_classes(config: dict[str, Any], *, source: str = "config.json") -> tuple[type, type]:
    """mlx-lm's (Model, ModelArgs) for a config, after checking we support the family."""
    fam = family_for(config, source=source)
    module = importlib.import_module(f"mlx_lm.models.{module_name(fam.model_type)}")
    return module.Model, module.ModelArgs


def build_skeleton(config: dict[str, Any], *, source: str = "config.json") -> nn.Module:
    """An mlx-lm model for `config`; its parameters stay lazy (never evaluated) until loaded."""
    model_cls, args_cls = model_classes(config, source=source)
    try:
        args = args_cls.from_dict(config)
        return model_cls(args)
    except (TypeError, KeyError, ValueError, AssertionError, AttributeError) as e:
        from engine.errors import CheckpointError

        raise CheckpointError(f"{source}: inconsistent model config ({e})") from e


def expert_attr(block: nn.Module) -> str:
    """Name under which a MoE block keeps its stacked experts (switch_mlp, experts, ...)."""
    names = [k for k, v in block.items() if isinstance(v, EXPERT_MODULES)]
    if len(names) != 1:
        raise UnsupportedModel(
            f"{type(block).__name__} has {len(names)} stacked expert modules; one is supported"
        )
    return names[0]


def get_experts(block: nn.Module) -> nn.Module:
    return block[expert_attr(block)]


def set_experts(block: nn.Module, module: nn.Module) -> None:
    setattr(block, expert_attr(block), module)


def experts_count(experts: nn.Module, block: nn.Module | None = None) -> int:
    """Routed experts of a stacked module (its weights' leading axis) or a streaming one."""
    for proj in (*GLU_PROJECTIONS, *MLP_PROJECTIONS):
        sub = experts.get(proj) if isinstance(experts, dict) else None
        if isinstance(sub, nn.Module):
            return int(sub["weight"].shape[0])
    n = getattr(experts, "_num_experts", None)
    if n is None:
        raise UnsupportedModel(f"{type(experts).__name__}: cannot tell its number of experts")
    return int(n)


def projections_of(experts: nn.Module) -> tuple[str, ...]:
    """mlx-lm projection names of a stacked expert module, in on-disk order."""
    return MLP_PROJECTIONS if isinstance(experts, SwitchMLP) else GLU_PROJECTIONS


def moe_blocks(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    """(layer index, dotted path of the MoE block, block) for every block owning experts."""
    out = []
    for path, module in model.named_modules():
        if any(isinstance(v, EXPERT_MODULES) for v in module.values()):
            # The decoder layer is the first list index on the path (layers.N, phixtral's h.N).
            index = next((p for p in path.split(".") if p.isdigit()), None)
            if index is None:
                raise UnsupportedModel(f"{path}: stacked experts outside a list of layers")
            layer = int(index)
            out.append((layer, path, module))
    out.sort(key=lambda t: t[0])
    layers = [t[0] for t in out]
    if len(set(layers)) != len(layers):
        raise UnsupportedModel("a decoder layer holds two stacked expert blocks; one is supported")
    return out
