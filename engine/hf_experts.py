"""Which HF tensor holds which expert's projection: asked of mlx-lm's own `sanitize`.

mlx-lm turns an HF checkpoint's expert tensors into its stacked modules in each family's
`sanitize`: per-expert tensors (`...experts.7.w1.weight`) are renamed and stacked, fused ones
(Qwen3.5's `experts.gate_up_proj` (E, 2I, D), Llama 4's (E, D, 2I)) are split and transposed.
Running that sanitize on small integer marker arrays, one per source tensor, whose values encode
(tensor, expert row, position), reads the mapping off the result with no data touched and no
per-family table: each expert of each stacked target is one source slab (a whole per-expert
tensor, or row e of a fused one) cut to a row/column range and maybe transposed. Marker axes are
shrunk to 4 positions, so a split in halves (or quarters) of an axis is recognized; anything
sanitize does beyond stacking, slicing and transposing (MXFP4 dequantization, interleaving) is
refused, naming the tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.errors import CheckpointError

SLOTS = 4  # marker positions per axis: a split into halves or quarters stays visible


@dataclass(frozen=True)
class View:
    """A cut of an expert's source slab: rows [r0, r1) and cols [c0, c1) in units of the axis
    length / SLOTS, then an optional transpose."""

    rows: tuple[int, int]
    cols: tuple[int, int] | None  # None for a 1-D slab (a bias)
    transpose: bool

    def shape(self, slab: tuple[int, ...]) -> tuple[int, ...]:
        out = [(self.rows[1] - self.rows[0]) * slab[0] // SLOTS]
        if self.cols is not None:
            out.append((self.cols[1] - self.cols[0]) * slab[1] // SLOTS)
        return tuple(reversed(out)) if self.transpose else tuple(out)

    def apply(self, a: np.ndarray) -> np.ndarray:
        """The cut of one slab (numpy, any dtype): a contiguous copy."""
        r = slice(self.rows[0] * a.shape[0] // SLOTS, self.rows[1] * a.shape[0] // SLOTS)
        if self.cols is None:
            return np.ascontiguousarray(a[r])
        c = slice(self.cols[0] * a.shape[1] // SLOTS, self.cols[1] * a.shape[1] // SLOTS)
        cut = a[r, c]
        return np.ascontiguousarray(cut.T if self.transpose else cut)

    @property
    def whole(self) -> bool:
        full = (0, SLOTS)
        return self.rows == full and self.cols in (None, full) and not self.transpose


@dataclass(frozen=True)
class Source:
    """Where one expert's tensor comes from: `index` is its row of a fused (E, ...) tensor
    (None: a per-expert tensor); `view` the cut of that slab (None: all of it)."""

    name: str
    index: int | None
    view: View | None


def expert_candidates(shapes: dict[str, tuple[int, ...]], num_experts: int) -> list[str]:
    """Source tensors that may hold routed experts: per-expert or fused (E, ...) ones."""
    return sorted(
        n
        for n, s in shapes.items()
        if "experts" in n and "shared_expert" not in n and 1 <= len(s) <= 3
    )


def _slab_dims(shape: tuple[int, ...], fused: bool) -> tuple[int, ...]:
    return shape[1:] if fused else shape


def _marker(tid: int, shape: tuple[int, ...], num_experts: int, fused: bool) -> mx.array:
    """Values encode (tensor id, expert row, row slot, col slot); shape is the source's with
    each slab axis shrunk to SLOTS."""
    dims = _slab_dims(shape, fused)
    e = num_experts if fused else 1
    grid = np.arange(e * SLOTS ** len(dims), dtype=np.int64).reshape(e, *([SLOTS] * len(dims)))
    code = tid * num_experts * SLOTS * SLOTS + grid * (SLOTS if len(dims) == 1 else 1)
    return mx.array(code.astype(np.int32) if fused else code[0].astype(np.int32))


def _decode(v: np.ndarray, num_experts: int) -> tuple[np.ndarray, ...]:
    tid, rest = np.divmod(v, num_experts * SLOTS * SLOTS)
    e, rest = np.divmod(rest, SLOTS * SLOTS)
    a, b = np.divmod(rest, SLOTS)
    return tid, e, a, b


def _run(rng: np.ndarray) -> tuple[int, int] | None:
    """(start, stop) if rng is start, start+1, ..., stop-1."""
    if rng.size and np.array_equal(rng, np.arange(rng[0], rng[0] + rng.size)):
        return int(rng[0]), int(rng[0] + rng.size)
    return None


def _view(block: np.ndarray, a: np.ndarray, b: np.ndarray, ndim: int) -> View | None:
    """The cut that maps a source slab's marker onto `block` (one expert of a target)."""
    if ndim == 1:
        rows = _run(a)
        return None if rows is None or block.ndim != 1 else View(rows, None, False)
    if block.ndim != 2:
        return None
    for transpose in (False, True):
        ra, cb = (a[:, 0], b[0, :]) if not transpose else (a[0, :], b[:, 0])
        rows, cols = _run(ra), _run(cb)
        if rows is None or cols is None:
            continue
        want_a = ra[:, None] if not transpose else ra[None, :]
        want_b = cb[None, :] if not transpose else cb[:, None]
        if np.array_equal(a, np.broadcast_to(want_a, a.shape)) and np.array_equal(
            b, np.broadcast_to(want_b, b.shape)
        ):
            return View(rows, cols, transpose)
    return None


def sanitize_map(
    skeleton: nn.Module,
    shapes: dict[str, tuple[int, ...]],
    targets: list[str],
    num_experts: int,
    source: str,
    others: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, list[Source]]:
    """stacked target name -> one Source per expert, via mlx-lm's sanitize on markers.

    shapes: candidate source tensors (`expert_candidates`) and their shapes; targets: stacked
    parameter names of the model's expert modules that the checkpoint must provide; others: the
    remaining tensors, passed as lazy zeros (never evaluated) since some sanitizes read them.
    """
    names = sorted(shapes)
    # A fused tensor stacks every expert on axis 0 under one name (experts.gate_up_proj).
    fused = {
        n: not _per_expert(n) and len(shapes[n]) >= 2 and shapes[n][0] == num_experts for n in names
    }
    markers: dict[str, Any] = {n: mx.zeros(s) for n, s in (others or {}).items()}
    for i, n in enumerate(names):
        dims = _slab_dims(shapes[n], fused[n])
        if any(d % SLOTS for d in dims):
            continue  # an axis a marker cannot stand in for: this tensor cannot be mapped
        markers[n] = _marker(i, shapes[n], num_experts, fused[n])
    if not hasattr(skeleton, "sanitize"):
        raise CheckpointError(f"{source}: the mlx-lm model has no sanitize to map expert names")
    try:
        out = skeleton.sanitize(dict(markers))
    except Exception as e:  # any family's sanitize: its failure is the checkpoint's to explain
        raise CheckpointError(
            f"{source}: mlx-lm's sanitize could not map the expert tensors ({e!r}); convert the "
            "checkpoint with `mlx_lm convert` (which stacks the experts) and pack that"
        ) from e
    mapping: dict[str, list[Source]] = {}
    for target in targets:
        arr = out.get(target)
        if arr is None:
            continue
        if arr.dtype != mx.int32 or arr.shape[0] != num_experts:
            raise _not_a_cut(source, target, arr)
        vals = np.array(arr)
        experts = []
        for e in range(num_experts):
            tid, ee, a, b = _decode(vals[e], num_experts)
            if tid.size == 0 or not (tid == tid.flat[0]).all() or tid.flat[0] >= len(names):
                raise _not_a_cut(source, target, arr)
            name = names[int(tid.flat[0])]
            if fused[name] and not (ee == e).all():
                raise _not_a_cut(source, target, arr)
            ndim = len(_slab_dims(shapes[name], fused[name]))
            view = _view(vals[e], a, b, ndim)
            if view is None:
                raise _not_a_cut(source, target, arr)
            experts.append(Source(name, e if fused[name] else None, None if view.whole else view))
        mapping[target] = experts
    return mapping


def _per_expert(name: str) -> bool:
    parts = name.split(".")
    return any(
        p == "experts" and i + 1 < len(parts) and parts[i + 1].isdigit()
        for i, p in enumerate(parts)
    )


def _not_a_cut(source: str, target: str, arr: mx.array) -> CheckpointError:
    return CheckpointError(
        f"{source}: mlx-lm builds {target} from the source by more than stacking, slicing and "
        f"transposing (marker result {arr.dtype} {list(arr.shape)}); this layout does not pack "
        "directly - convert the checkpoint with `mlx_lm convert` and pack that"
    )


def used_sources(mapping: dict[str, list[Source]]) -> set[str]:
    return {s.name for srcs in mapping.values() for s in srcs}


def per_expert_names(names: Iterable[str]) -> list[str]:
    """Source tensors that belong to one routed expert each (HF per-expert layout)."""
    return sorted(n for n in names if _per_expert(n))
