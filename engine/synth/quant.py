"""`synth --quantize`: write the checkpoint directly in mlx-community's quantized layout.

What `mlx_lm convert -q` would write from the HF checkpoint `synth` writes, without ever
holding that checkpoint: the layout (names, shapes, dtypes, config) is mlx-lm's own, taken from
its `quantize_model` applied to the lazy skeleton (never evaluated), and the values are the same
bf16 tensors the HF path generates, quantized with `mx.quantize` one expert (or one block of
vocabulary rows) at a time. Affine quantization works per group along the last axis, so
quantizing one expert equals quantizing the stacked tensor: the bytes match convert's.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path

from engine.families import FAMILIES, build_skeleton
from engine.synth.write import ST_CODES, Group, Put, TensorSpec, row_chunks

if TYPE_CHECKING:
    from engine.synth.hf import TensorMaker

_DTYPE = mx.bfloat16  # convert's dtype: the HF checkpoint's torch_dtype
_MX = {code: dtype for dtype, code in ST_CODES.items()}


def cast_skeleton(config: dict[str, Any]) -> nn.Module:
    """mlx-lm's model for `config` (lazy) cast as convert casts it: bf16, except the parameters
    the model's `cast_predicate` keeps (e.g. Gated DeltaNet's A_log stays float32)."""
    model = build_skeleton(config)
    cast = getattr(model, "cast_predicate", lambda _k: True)

    def set_dtype(k: str, v: mx.array) -> mx.array:
        return v.astype(_DTYPE) if cast(k) and mx.issubdtype(v.dtype, mx.floating) else v

    model.update(tree_map_with_path(set_dtype, model.parameters()))
    return model


def quantized_skeleton(
    config: dict[str, Any], bits: int, group_size: int
) -> tuple[nn.Module, dict[str, Any]]:
    """mlx-lm's model for `config` after convert's cast + quantize (lazy), and its config.json."""
    from mlx_lm.utils import quantize_model

    model = cast_skeleton(config)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints bits-per-weight
        model, qconfig = quantize_model(model, config, group_size, bits)
    return model, qconfig


def quantized_groups(
    config: dict[str, Any], make: TensorMaker, bits: int, group_size: int
) -> tuple[list[Group], dict[str, Any]]:
    """The checkpoint's tensors as write groups (file order), and its config.json."""
    from engine.synth.hf import _LAYER, is_vocab_tensor, tensor_plan, vocab_block

    model, qconfig = quantized_skeleton(config, bits, group_size)
    fam = FAMILIES[config["model_type"]]
    specs = {
        n: TensorSpec(n, tuple(a.shape), ST_CODES[a.dtype])
        for n, a in tree_flatten(model.parameters())
    }
    # module path -> quantize(w) for the modules mlx-lm quantized (their own bits/group size)
    quant: dict[str, Callable[[mx.array], list[mx.array]]] = {}
    for path, m in model.named_modules():
        if isinstance(m, nn.Module) and "scales" in m:
            quant[path] = _quantizer(m)
    hf_plan = tensor_plan(config)
    hf_shape = dict(hf_plan)

    def put_module(put: Put, path: str, row: int, w: mx.array, stacked: bool = False) -> None:
        """Write float rows `w` of module `path`'s weight (quantized if mlx-lm quantizes it)."""
        parts = quant[path](w) if path in quant else [w.astype(_param_dtype(specs, path))]
        for part, arr in zip(("weight", "scales", "biases"), parts, strict=False):
            put(f"{path}.{part}", row, arr[None] if stacked else arr)

    groups: list[Group] = []
    done: set[str] = set()

    def add(names: list[str], fill: Callable[[Put], None]) -> None:
        groups.append(Group(tuple(specs[n] for n in names), fill))
        done.update(names)

    def module_names(path: str) -> list[str]:
        return [n for n in specs if n.rsplit(".", 1)[0] == path]

    # Layer-free tensors first (embedding), then per layer: attention/norms/router/shared, then
    # each stacked expert projection; the final norm and lm_head last, as the HF plan orders.
    by_layer: dict[int, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape in hf_plan:
        m = _LAYER.search(name)
        by_layer.setdefault(int(m.group(1)) if m else -1, []).append((name, shape))
    for name, shape in by_layer.pop(-1, []):
        if is_vocab_tensor(name) == "embed":
            add(*_vocab_group(name, shape, make, put_module, module_names, vocab_block))
    for layer in sorted(by_layer):
        dense = [(n, s) for n, s in by_layer[layer] if ".experts." not in n]
        names = [
            n
            for n in specs
            if f".layers.{layer}." in n and ".switch_mlp." not in n and n not in done
        ]

        def fill_dense(put: Put, dense: list[tuple[str, tuple[int, ...]]] = dense) -> None:
            for name, shape in dense:
                for k, v in model.sanitize({name: make(name, shape)}).items():
                    path, part = k.rsplit(".", 1)
                    if part == "weight":
                        put_module(put, path, 0, v)
                    else:
                        put(k, 0, v.astype(_MX[specs[k].dtype]))

        add(names, fill_dense)
        for path in sorted({n.rsplit(".", 1)[0] for n in specs if f".layers.{layer}." in n}):
            if ".switch_mlp." not in path:
                continue
            block, proj = path.split(".switch_mlp.")
            shape = hf_shape[fam.hf_expert_key(block, 0, proj)]

            def fill_experts(
                put: Put, path: str = path, block: str = block, proj: str = proj, shape=shape
            ) -> None:
                for e in range(specs[f"{path}.weight"].shape[0]):
                    w = make(fam.hf_expert_key(block, e, proj), shape)  # [out, in] bf16
                    put_module(put, path, e, w, stacked=True)

            add(module_names(path), fill_experts)
    rest = [(n, s) for n, s in hf_plan if not _LAYER.search(n) and is_vocab_tensor(n) != "embed"]
    for name, shape in rest:
        if is_vocab_tensor(name):
            add(*_vocab_group(name, shape, make, put_module, module_names, vocab_block))
        else:
            add([name], lambda put, name=name, shape=shape: put(name, 0, make(name, shape)))
    missing = sorted(set(specs) - done)
    if missing:  # a family whose tensors this mapping does not know: refuse, never write zeros
        from engine.errors import CheckpointError

        raise CheckpointError(
            f"--quantize: no generator for {missing[:3]} ({config['model_type']})"
        )
    return groups, qconfig


def _vocab_group(
    name: str,
    shape: tuple[int, ...],
    make: TensorMaker,
    put_module: Callable[..., None],
    module_names: Callable[[str], list[str]],
    vocab_block: Callable[[int], int],
) -> tuple[list[str], Callable[[Put], None]]:
    path = name.rsplit(".", 1)[0]

    def fill(put: Put) -> None:
        for lo, hi in row_chunks(shape[0], vocab_block(shape[1])):
            put_module(put, path, lo, make.rows(name, lo, hi))

    return module_names(path), fill


def _quantizer(m: nn.Module) -> Callable[[mx.array], list[mx.array]]:
    def q(w: mx.array) -> list[mx.array]:
        return list(mx.quantize(w, group_size=m.group_size, bits=m.bits, mode=m.mode))

    return q


def _param_dtype(specs: dict[str, TensorSpec], path: str) -> mx.Dtype:
    return _MX[specs[f"{path}.weight"].dtype]
