"""ExpertArena: every expert the CPU kernels compute with lives in one slot of one array.

A slot holds one expert's gate/up/down matrices in the kernels' layout (engine.kernels), made
from the store's bytes once per load (`prepare`, in a reader thread; `place` copies it in).
One array for all of them lets a single kernel call compute a layer's experts across threads,
and lets the cache hand over a slot id instead of copying: a miss is loaded into a free slot,
computed, then given to the cache (or freed).

Slots: `cache_slots` the cache may own + `work_slots` for the layer being computed, so a free
slot always exists for every expert of a group. The arena is an anonymous mapping: untouched
slots cost no RAM, and `drop_free` hands the pages of free slots back to the OS (what a memory
budget that shrinks the cache needs: a freed numpy buffer would stay in RSS).
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np

from engine import kernels as K
from engine.errors import MemoryBudgetError, StoreError
from engine.repack import half_to_f32, repack_quantized
from engine.store import Store, TensorSpec

PROJECTIONS = ("gate_proj", "up_proj", "down_proj")  # order of the kernels' matrix table


def expert_layout(store: Store) -> tuple[np.ndarray, int]:
    """(matrix table for gate, up, down; slot bytes) of a store's experts in kernel layout."""
    specs = {t.name: t for t in store.expert_tensors}
    quant = store.bits < 16
    mats = []
    for proj in PROJECTIONS:
        w = specs.get(f"{proj}.weight")
        if w is None:
            raise StoreError(
                f"{store.root}: experts have no {proj}.weight; the CPU compute path needs "
                "gate/up/down projections (use compute_path = 'mlx')"
            )
        o_dim = w.shape[0]
        if quant:
            gs = int(store.group_size or 64)
            i_dim = w.shape[1] * 32 // store.bits
            fmt = K.matrix_format(store.bits, "")
        else:
            gs, i_dim = 0, w.shape[1]
            fmt = K.FMT_BF16 if w.dtype == "bfloat16" else K.FMT_F32
        mats.append((fmt, o_dim, i_dim, gs))
    return K.layout_table(mats)


def cpu_experts_unsupported(store: Store, blocks: list[Any]) -> str | None:
    """Why the CPU kernels cannot compute these experts (None: they can). They do SwiGLU
    experts (gate/up/down, no biases) at 2-8 or 16 bits; the rest stays on MLX's ops."""
    from mlx_lm.models.switch_layers import SwiGLU

    names = {t.name for t in store.expert_tensors}
    allowed = {f"{p}.{part}" for p in PROJECTIONS for part in ("weight", "scales", "biases")}
    if not names <= allowed or not all(f"{p}.weight" in names for p in PROJECTIONS):
        return f"expert tensors {sorted(names - allowed) or sorted(names)} are not SwiGLU's"
    acts = {type(b.activation).__name__ for b in blocks if type(b.activation) is not SwiGLU}
    if acts:
        return f"activation {', '.join(sorted(acts))} has no CPU kernel yet"
    return None


def slot_bytes(store: Store) -> int:
    """RAM one expert takes in the arena: its kernel layout, in whole pages (droppable)."""
    return -(-expert_layout(store)[1] // mmap.PAGESIZE) * mmap.PAGESIZE


def _u8(raw: np.ndarray, t: TensorSpec) -> np.ndarray:
    return raw[t.offset : t.offset + t.nbytes]


def _floats(raw: np.ndarray, t: TensorSpec) -> np.ndarray:
    """Scales or biases as float32, whatever float dtype the store keeps them in."""
    b = _u8(raw, t)
    return b.view(np.float32) if t.dtype == "float32" else half_to_f32(b.view(np.uint16), t.dtype)


class ExpertArena:
    def __init__(self, store: Store, cache_slots: int, work_slots: int) -> None:
        self.store = store
        self.mats = expert_layout(store)[0]
        self.slot_bytes = slot_bytes(store)
        self.cache_slots, self.work_slots = cache_slots, work_slots
        n = cache_slots + work_slots
        # Pages are faulted in lazily: RSS grows only with the slots actually used.
        try:
            self._map = mmap.mmap(-1, max(n * self.slot_bytes, mmap.PAGESIZE))
        except OSError as e:
            raise MemoryBudgetError(
                f"cannot reserve {n} expert slots of {self.slot_bytes:,} bytes ({e.strerror}); "
                "lower cache_bytes"
            ) from e
        self.data = np.frombuffer(self._map, np.uint8)[: n * self.slot_bytes]
        self.data = self.data.reshape(n, self.slot_bytes)
        self._free = list(range(n - 1, -1, -1))
        self._specs = {t.name: t for t in store.expert_tensors}

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        if not self._free:  # unreachable while the cache holds <= cache_slots (accounting bug)
            raise RuntimeError("expert arena: no free slot")
        return self._free.pop()

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def drop_free(self) -> None:
        """Return the RAM of every free slot to the OS (its bytes read as zeros afterwards)."""
        for slot in self._free:
            self._map.madvise(mmap.MADV_DONTNEED, slot * self.slot_bytes, self.slot_bytes)

    def prepare(self, raw: np.ndarray) -> np.ndarray:
        """An expert's bytes as stored -> a new buffer in kernel layout (what `place` copies
        into a slot): run by the reader threads, so repacking overlaps compute and other
        reads instead of stalling the layer that missed."""
        buf = np.empty(self.slot_bytes, np.uint8)
        self.fill(buf, raw)
        return buf

    def place(self, slot: int, prepared: np.ndarray) -> None:
        self.data[slot][:] = prepared

    def fill(self, dst: np.ndarray, raw: np.ndarray) -> None:
        st = self.store
        for row, proj in enumerate(PROJECTIONS):
            fmt, o_dim, i_dim, gs, off, f = (int(v) for v in self.mats[row])
            w = _u8(raw, self._specs[f"{proj}.weight"])
            if fmt in (K.FMT_Q4, K.FMT_Q8):
                s_t, b_t = self._specs[f"{proj}.scales"], self._specs[f"{proj}.biases"]
                scales, biases = _floats(raw, s_t), _floats(raw, b_t)
                end = off + K.matrix_bytes(fmt, o_dim, i_dim, gs)
                repack_quantized(w, scales, biases, st.bits, fmt, o_dim, i_dim, gs, f, dst[off:end])
            elif self._specs[f"{proj}.weight"].dtype == "float16":
                dst[off : off + w.size * 2].view(np.float32)[:] = w.view(np.float16)
            else:  # bfloat16 bits or float32: the kernel reads them as stored
                dst[off : off + w.size] = w
