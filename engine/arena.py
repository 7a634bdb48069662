"""ExpertArena: every expert the CPU kernels compute with lives in one slot of one array.

A slot holds one expert's gate/up/down matrices in the kernels' layout (engine.kernels), made
from the store's bytes once per load (`load`, in the reader thread that read them: repacking
overlaps compute and other reads, and the bytes land in their slot with no copy on the
model's thread). One array for all of them lets a single kernel call compute a layer's experts
across threads, and lets the cache hand over a slot id instead of copying: a miss is loaded
into a free slot, computed, then given to the cache (or freed).

Slots: `cache_slots` the cache may own + `work_slots` for the layer being computed + the
`staging_slots` that prefetch guesses fill ahead of their layer. Guesses hold at most
`staging_slots` at a time (a guess's slot is the group's once its layer takes it), so a free
slot always exists for every expert of a group; a guess that finds none is repacked into its
own buffer and copied into a slot when its layer takes it (`slot_of`, the model's thread).
The arena is an anonymous mapping: untouched slots cost no RAM, and `drop_free` hands the
pages of free slots back to the OS (what a memory budget that shrinks the cache needs: a freed
numpy buffer would stay in RSS). Slots are taken and given back from reader threads and the
model's thread alike, under one lock.
"""

from __future__ import annotations

import mmap
import threading
from concurrent.futures import Future
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
    def __init__(
        self, store: Store, cache_slots: int, work_slots: int, staging_slots: int = 0
    ) -> None:
        self.store = store
        self.mats = expert_layout(store)[0]
        self.slot_bytes = slot_bytes(store)
        self.cache_slots, self.work_slots = cache_slots, work_slots
        self.staging_slots = staging_slots
        n = cache_slots + work_slots + staging_slots
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
        self._staged: set[int] = set()  # slots guesses hold, not yet taken by their layer
        self._lock = threading.Lock()
        self._specs = {t.name: t for t in store.expert_tensors}

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def alloc(self) -> int:
        with self._lock:
            if not self._free:  # unreachable while the cache holds <= cache_slots
                raise RuntimeError("expert arena: no free slot")
            return self._free.pop()

    def _alloc_staged(self) -> int | None:
        with self._lock:
            if not self._free or len(self._staged) >= self.staging_slots:
                return None
            slot = self._free.pop()
            self._staged.add(slot)
            return slot

    def free(self, slot: int) -> None:
        with self._lock:
            self._staged.discard(slot)
            self._free.append(slot)

    def release(self, loaded: Any) -> None:
        """Give back what `load` returned for an expert no one will compute with."""
        if isinstance(loaded, int):
            self.free(loaded)

    def release_read(self, fut: Future) -> None:
        """Done-callback of a read no one will take (a dropped guess, a failed group's rest):
        gives back the slot its `load` filled."""
        if not fut.cancelled() and fut.exception() is None:
            self.release(fut.result())

    def drop_free(self) -> None:
        """Return the RAM of every free slot to the OS (its bytes read as zeros afterwards)."""
        with self._lock:  # a slot being filled is never in the list, nor taken mid-madvise
            for slot in self._free:
                self._map.madvise(mmap.MADV_DONTNEED, slot * self.slot_bytes, self.slot_bytes)

    def load(self, raw: np.ndarray, speculative: bool = False) -> int | np.ndarray:
        """An expert's bytes as stored -> kernel layout, in a free slot (returns its id), or in
        a new buffer when a guess may take none (`slot_of` copies it in later). Run by the
        reader threads."""
        slot = self._alloc_staged() if speculative else self.alloc()
        if slot is None:
            buf = np.zeros(self.slot_bytes, np.uint8)  # padding as in an unused slot
            self.fill(buf, raw)
            return buf
        try:
            self.fill(self.data[slot], raw)
        except BaseException:
            self.free(slot)
            raise
        return slot

    def slot_of(self, loaded: int | np.ndarray) -> int:
        """The slot holding what `load` returned, now the layer's (placed now if a buffer)."""
        if isinstance(loaded, int):
            with self._lock:
                self._staged.discard(loaded)
            return loaded
        slot = self.alloc()
        self.data[slot][:] = loaded
        return slot

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
