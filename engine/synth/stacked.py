"""Real-shape checkpoints of families whose HF names synth does not know, in mlx-community layout.

`engine.synth.hf` writes HF per-expert names it knows for five families; any other family that
streams (e.g. `qwen3_5_moe`, the seed model) is written the way mlx-community ships it: mlx-lm's
own parameter names with stacked `switch_mlp` experts, bf16 (what `mlx_lm convert` writes) or
quantized (`convert -q`). The tensor list is mlx-lm's lazy skeleton for the config, never
evaluated, so nothing here knows a family's names. Each parameter gets its values from one
rule, keyed by its module's type and its name:

- planted routing: the embedding, lm_head and every router go through the same `TensorMaker`
  as the HF path (routers found on the skeleton's MoE blocks, like the engine finds them);
- norms (`TensorMaker`: ones), linear and expert weights (`TensorMaker`: scaled random, drift
  on the projections that write the residual stream), linear/conv biases and depthwise convs
  (mlx's own init ranges);
- Gated DeltaNet's `A_log` and `dt_bias` (mlx-lm's init: decay rates in a stable range).

A parameter no rule covers is refused by name, never written as zeros. RAM stays bounded as in
`engine.synth.quant`: one expert, one block of vocabulary rows or one dense tensor at a time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import SwitchLinear

from engine.errors import CheckpointError
from engine.families import _router, build_skeleton, experts_count, get_experts, moe_blocks
from engine.synth.quant import _MX, _quantizer, cast_skeleton, quantized_skeleton
from engine.synth.write import ST_CODES, Group, Put, TensorSpec, row_chunks

if TYPE_CHECKING:
    from engine.synth.hf import TensorMaker

# Whole-tensor generator: () -> float values of the parameter's (unquantized) shape.
Make = Callable[[], mx.array]
# Per-expert generator: e -> float values of expert e's slice of a stacked parameter.
Expert = Callable[[int], mx.array]


def stacked_groups(
    config: dict[str, Any], make: TensorMaker, bits: int | None, group_size: int = 64
) -> tuple[list[Group], dict[str, Any]]:
    """The checkpoint's tensors as write groups (file order), and its config.json.

    bits None = bf16 (what `mlx_lm convert` writes), 4 or 8 = `convert -q --q-bits N`."""
    from engine.synth.hf import _LAYER, is_vocab_tensor, vocab_block

    floats = build_skeleton(config)  # shapes and module types before quantization
    if bits is None:
        model, out_config = cast_skeleton(config), config
    else:
        model, out_config = quantized_skeleton(config, bits, group_size)
    specs = {
        n: TensorSpec(n, tuple(a.shape), ST_CODES[a.dtype])
        for n, a in tree_flatten(model.parameters())
    }
    quant = {p: _quantizer(m) for p, m in model.named_modules() if "scales" in m}
    modules = dict(floats.named_modules())
    routers = _routers(floats)
    vocab = (int(config["vocab_size"]), int(config["hidden_size"]))

    def emit(put: Put, name: str, row: int, w: mx.array, stacked: bool = False) -> None:
        """Write float rows `w` of `name` at `row`: quantized if mlx-lm quantizes its module."""
        path, attr = name.rsplit(".", 1)
        if attr == "weight" and path in quant:
            # affine gives (weight, scales, biases); a mode without biases gives two parts
            q = quant[path](w.astype(mx.bfloat16))
            parts = zip(("weight", "scales", "biases"), q, strict=False)
            out = [(f"{path}.{part}", arr) for part, arr in parts]
        else:
            out = [(name, w.astype(_MX[specs[name].dtype]))]
        for key, arr in out:
            put(key, row, arr[None] if stacked else arr)

    def written(name: str) -> list[str]:
        path, attr = name.rsplit(".", 1)
        if attr == "weight" and path in quant:
            return [n for n in (f"{path}.weight", f"{path}.scales", f"{path}.biases") if n in specs]
        return [name]

    keyed: list[tuple[tuple[int, int, str], Group]] = []
    for name, arr in tree_flatten(floats.parameters()):
        shape = tuple(int(d) for d in arr.shape)
        path, attr = name.rsplit(".", 1)
        module = modules[path]
        if is_vocab_tensor(name) and shape == vocab:

            def fill(put: Put, name: str = name, rows: int = shape[0]) -> None:
                for lo, hi in row_chunks(rows, vocab_block(vocab[1])):
                    emit(put, name, lo, make.rows(name, lo, hi))

        elif isinstance(module, SwitchLinear):
            per_expert = _expert_rule(name, shape[1:], module, attr, make)

            def fill(
                put: Put, name: str = name, n: int = shape[0], expert: Expert = per_expert
            ) -> None:
                for e in range(n):
                    emit(put, name, e, expert(e), stacked=True)

        else:
            gen = _rule(name, shape, module, attr, make, routers)
            if gen is None:
                raise CheckpointError(
                    f"synth {config['model_type']}: no rule to generate {name} {list(shape)} "
                    f"({type(module).__name__}.{attr}); nothing was written. Add one to "
                    "engine/synth/stacked.py rather than writing zeros"
                )

            def fill(put: Put, name: str = name, gen: Make = gen) -> None:
                emit(put, name, 0, gen())

        m = _LAYER.search(name)
        first = int(m.group(1)) if m else (-1 if is_vocab_tensor(name) == "embed" else 1 << 30)
        # Per layer: dense tensors first, then each stacked expert projection (as quant.py does).
        kind = int(isinstance(module, SwitchLinear))
        group = Group(tuple(specs[n] for n in written(name)), fill)
        keyed.append(((first, kind, name), group))
    groups = [g for _, g in sorted(keyed, key=lambda t: t[0])]
    missing = set(specs) - {t.name for g in groups for t in g.tensors}
    if missing:  # a quantized part the float skeleton does not explain: never leave it empty
        raise CheckpointError(
            f"synth {config['model_type']}: no rule to generate {sorted(missing)[:3]}"
        )
    return groups, out_config


def _routers(model: nn.Module) -> dict[str, int]:
    """Router weight name -> decoder layer, found as the engine finds routers."""
    out: dict[str, int] = {}
    for layer, path, block in moe_blocks(model):
        router = _router(block, experts_count(get_experts(block)))
        sub = next(p for p, m in block.named_modules() if m is router)
        out[f"{path}.{sub}.weight" if sub else f"{path}.weight"] = layer
    return out


def _rng(make: TensorMaker, name: str) -> np.random.Generator:
    """Seeded by (seed, name) as TensorMaker is: any write order gives the same bytes."""
    return np.random.default_rng([make.seed, zlib.crc32(name.encode())])


def _uniform(make: TensorMaker, name: str, shape: tuple[int, ...], scale: float) -> Make:
    def gen() -> mx.array:
        return mx.array(_rng(make, name).uniform(-scale, scale, shape).astype(np.float32))

    return gen


def _is_norm(module: nn.Module, path: str) -> bool:
    # TensorMaker's norm rule is by name (the module's name contains "norm"); require the type
    # too, so a norm-named projection is never written as ones.
    return "Norm" in type(module).__name__ and "norm" in path.rsplit(".", 1)[-1]


def _rule(
    name: str,
    shape: tuple[int, ...],
    module: nn.Module,
    attr: str,
    make: TensorMaker,
    routers: dict[str, int],
) -> Make | None:
    """The generator of one non-expert, non-vocabulary parameter, or None (no rule)."""
    path = name.rsplit(".", 1)[0]
    if name in routers:
        layer = routers[name]
        return lambda: mx.array(make.plan.router(layer)).astype(mx.bfloat16)
    if name.endswith("e_score_correction_bias") or (_is_norm(module, path) and attr == "weight"):
        return lambda: make(name, shape)  # float32 zeros / ones, as the HF path writes them
    if attr == "weight" and isinstance(module, nn.Linear):
        return lambda: make(name, shape)
    if attr == "bias" and isinstance(module, nn.Linear | nn.Conv1d):
        fan_in = int(np.prod(module["weight"].shape[1:]))
        return _uniform(make, name, shape, 1 / np.sqrt(fan_in))  # nn.Linear's own init range
    if attr == "weight" and isinstance(module, nn.Conv1d):
        # Gated DeltaNet's depthwise conv [C, K, 1]: nn.Conv1d's init range, 1/sqrt(K * in/groups)
        return _uniform(make, name, shape, 1 / np.sqrt(int(np.prod(shape[1:]))))
    if attr == "A_log":
        # Gated DeltaNet's per-head decay rate: log(A), A in mlx-lm's (0, 16) init range, kept
        # >= 1 so no head's state is (nearly) never forgotten.
        def a_log() -> mx.array:
            return mx.array(np.log(_rng(make, name).uniform(1.0, 16.0, shape)).astype(np.float32))

        return a_log
    if attr == "dt_bias":
        return lambda: mx.ones(shape, dtype=mx.float32)  # mlx-lm's init
    return None


def _expert_rule(
    name: str, shape: tuple[int, ...], module: nn.Module, attr: str, make: TensorMaker
) -> Expert:
    """Expert e's slice of a stacked projection, named and generated as the HF path's expert."""
    path = name.rsplit(".", 1)[0]
    experts, proj = path.rsplit(".", 1)
    block = experts.rsplit(".", 1)[0]

    def gen(e: int) -> mx.array:
        key = f"{block}.experts.{e}.{proj}.{attr}"  # down_proj gets the drift, as in hf.py
        if attr == "weight":
            return make(key, shape)
        fan_in = int(module["weight"].shape[-1])
        return _uniform(make, key, shape, 1 / np.sqrt(fan_in))()

    if attr not in ("weight", "bias"):
        raise CheckpointError(f"synth: no rule to generate {name} (SwitchLinear.{attr})")
    return gen
