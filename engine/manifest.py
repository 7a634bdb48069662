"""Parse and cross-check a store's manifest.json: an untrusted file, so every field is typed,
ranged and checked against the others before any byte of the store is read through it.

`parse_manifest` turns the JSON text into typed records or raises StoreCorrupt naming the key;
`layout_problems` lists every inconsistency between the records (alignment, overlaps, tensor
sizes, quantization, paths) so `verify` can name them all and `Store.open` can refuse the first.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import xxhash

from engine.contract import KNOBS
from engine.errors import StoreCorrupt

FORMAT = "moe-expert-store"
# v2: xxh3_64 checksums (v1: crc32, too slow to check on every read) and checksummed dense files.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
QUANT_BITS = KNOBS["quant_bits"].choices
QUANT_GROUP_SIZES = KNOBS["quant_group_size"].choices
# bytes per element of each tensor dtype a store may hold
ITEMSIZE = {"uint32": 4, "uint16": 2, "uint8": 1, "float16": 2, "bfloat16": 2, "float32": 4}
FLOAT_DTYPES = ("float16", "bfloat16", "float32")
# A sanity bound on any size or offset: larger than any disk, small enough to never overflow.
MAX_BYTES = 1 << 50


def checksum(data: bytes | memoryview | Any) -> str:
    """The store's checksum of a buffer: xxh3_64 as 16 hex digits (~10+ GB/s on one core)."""
    return xxhash.xxh3_64_hexdigest(data)


def new_hasher() -> xxhash.xxh3_64:
    """An incremental form of `checksum` (pack hashes an expert tensor by tensor)."""
    return xxhash.xxh3_64()


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of an expert: `name` is `<mlx projection>.<weight|scales|biases>`."""

    name: str
    offset: int  # bytes from the expert's start
    nbytes: int
    shape: tuple[int, ...]
    dtype: str  # a key of ITEMSIZE


@dataclass(frozen=True)
class ExpertLoc:
    offset: int  # bytes from the start of the layer file; multiple of align
    nbytes: int  # data bytes (what the checksum covers)
    span: int  # nbytes rounded up to align (what an O_DIRECT read fetches)
    checksum: str  # `checksum()` of the nbytes data bytes


@dataclass(frozen=True)
class LayerEntry:
    layer: int  # decoder layer index
    block: str  # dotted path of the MoE block in the mlx-lm model, e.g. model.layers.3.mlp
    file: str  # relative to the store root
    file_size: int
    order: tuple[int, ...]  # expert ids in on-disk order
    experts: tuple[ExpertLoc, ...]  # indexed by expert id


@dataclass(frozen=True)
class DenseFile:
    name: str  # file name inside dense/
    size: int
    checksum: str


@dataclass(frozen=True)
class Manifest:
    raw: dict[str, Any]
    model_type: str
    num_experts: int
    top_k: int
    bits: int
    group_size: int | None
    dtype: str
    layout: str
    align: int
    expert_tensors: tuple[TensorSpec, ...]
    layers: tuple[LayerEntry, ...]
    dense: tuple[DenseFile, ...]
    fingerprint: str


class _Bad(Exception):
    """A field problem; parse_manifest turns it into one StoreCorrupt naming the file."""


def parse_manifest(text: bytes, where: str) -> Manifest:
    """manifest.json bytes -> Manifest; StoreCorrupt (one line, naming the key) otherwise."""
    try:
        doc = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise StoreCorrupt(f"{where}: not UTF-8 text ({e}); re-pack the store") from None
    except (ValueError, RecursionError) as e:
        raise StoreCorrupt(f"{where}: not valid JSON ({e}); re-pack the store") from None
    if not isinstance(doc, dict):
        raise StoreCorrupt(f"{where}: must be a JSON object, not {type(doc).__name__}; re-pack")
    if doc.get("format") != FORMAT:
        raise StoreCorrupt(f"{where}: format is {doc.get('format')!r}, not {FORMAT!r}")
    if doc.get("version") != FORMAT_VERSION:
        raise StoreCorrupt(
            f"{where}: store format v{doc.get('version')!r}, this engine reads "
            f"v{FORMAT_VERSION}; re-pack with this engine version (moe-engine pack --force)"
        )
    try:
        return _manifest(doc)
    except _Bad as e:
        raise StoreCorrupt(f"{where}: {e}; re-pack the store (moe-engine pack --force)") from None


def _manifest(doc: dict[str, Any]) -> Manifest:
    quant = _get(doc, "quant", dict)
    bits = _get(quant, "bits", int, key="quant.bits")
    if bits not in QUANT_BITS:
        raise _Bad(f"key 'quant.bits' must be one of {QUANT_BITS}, got {bits}")
    gs = quant.get("group_size")
    if gs is not None and (not _is_int(gs) or gs not in QUANT_GROUP_SIZES):
        raise _Bad(f"key 'quant.group_size' must be one of {QUANT_GROUP_SIZES} or null, got {gs!r}")
    if bits < 16 and gs is None:
        raise _Bad(f"key 'quant.group_size' is null but quant.bits is {bits}")
    dtype = _get(quant, "dtype", str, key="quant.dtype")
    if dtype not in FLOAT_DTYPES:
        raise _Bad(f"key 'quant.dtype' must be one of {FLOAT_DTYPES}, got {dtype!r}")
    num_experts = _get(doc, "num_experts", int, minimum=1)
    top_k = _get(doc, "top_k", int, minimum=1)
    if top_k > num_experts:
        raise _Bad(f"key 'top_k' ({top_k}) exceeds num_experts ({num_experts})")
    align = _get(doc, "align", int, minimum=1)
    tensors = tuple(
        _tensor(t, f"expert_tensors[{i}]")
        for i, t in enumerate(_get(doc, "expert_tensors", list, minimum=1))
    )
    layers = tuple(_layer(le, f"layers[{i}]") for i, le in enumerate(_get(doc, "layers", list)))
    dense = _get(doc, "dense", dict)
    files = tuple(_dense(name, d) for name, d in dense.items())
    return Manifest(
        raw=doc,
        model_type=_get(doc, "model_type", str),
        num_experts=num_experts,
        top_k=top_k,
        bits=bits,
        group_size=gs,
        dtype=dtype,
        layout=_get(doc, "layout", str),
        align=align,
        expert_tensors=tensors,
        layers=layers,
        dense=files,
        fingerprint=_get(doc, "fingerprint", str),
    )


def _tensor(t: Any, key: str) -> TensorSpec:
    if not isinstance(t, dict):
        raise _Bad(f"key {key!r} must be an object")
    shape = _get(t, "shape", list, key=f"{key}.shape", minimum=1)
    if not all(_is_int(d) and 0 < d < MAX_BYTES for d in shape):
        raise _Bad(f"key '{key}.shape' must be positive integers, got {shape!r}")
    dtype = _get(t, "dtype", str, key=f"{key}.dtype")
    if dtype not in ITEMSIZE:
        raise _Bad(f"key '{key}.dtype' must be one of {tuple(ITEMSIZE)}, got {dtype!r}")
    return TensorSpec(
        name=_get(t, "name", str, key=f"{key}.name"),
        offset=_get(t, "offset", int, key=f"{key}.offset", minimum=0),
        nbytes=_get(t, "nbytes", int, key=f"{key}.nbytes", minimum=1),
        shape=tuple(shape),
        dtype=dtype,
    )


def _layer(le: Any, key: str) -> LayerEntry:
    if not isinstance(le, dict):
        raise _Bad(f"key {key!r} must be an object")
    order = _get(le, "order", list, key=f"{key}.order")
    if not all(_is_int(e) for e in order):
        raise _Bad(f"key '{key}.order' must be expert ids")
    experts = []
    for i, x in enumerate(_get(le, "experts", list, key=f"{key}.experts")):
        k = f"{key}.experts[{i}]"
        if not isinstance(x, dict):
            raise _Bad(f"key {k!r} must be an object")
        experts.append(
            ExpertLoc(
                offset=_get(x, "offset", int, key=f"{k}.offset", minimum=0),
                nbytes=_get(x, "nbytes", int, key=f"{k}.nbytes", minimum=1),
                span=_get(x, "span", int, key=f"{k}.span", minimum=1),
                checksum=_get(x, "checksum", str, key=f"{k}.checksum"),
            )
        )
    return LayerEntry(
        layer=_get(le, "layer", int, key=f"{key}.layer", minimum=0),
        block=_get(le, "block", str, key=f"{key}.block"),
        file=_get(le, "file", str, key=f"{key}.file"),
        file_size=_get(le, "file_size", int, key=f"{key}.file_size", minimum=0),
        order=tuple(order),
        experts=tuple(experts),
    )


def _dense(name: str, d: Any) -> DenseFile:
    key = f"dense.{name}"
    if not isinstance(d, dict):
        raise _Bad(f"key {key!r} must be an object")
    return DenseFile(
        name=name,
        size=_get(d, "size", int, key=f"{key}.size", minimum=0),
        checksum=_get(d, "checksum", str, key=f"{key}.checksum"),
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _get(d: dict[str, Any], name: str, kind: type, *, key: str = "", minimum: int = 0) -> Any:
    """d[name] of type `kind`; ints in [minimum, MAX_BYTES], lists with >= minimum items."""
    key = key or name
    if name not in d:
        raise _Bad(f"key {key!r} is missing")
    v = d[name]
    if kind is int:
        if not _is_int(v) or not minimum <= v <= MAX_BYTES:
            raise _Bad(f"key {key!r} must be an integer in [{minimum}, 2**50], got {v!r}")
    elif not isinstance(v, kind):
        raise _Bad(f"key {key!r} must be a {kind.__name__}, got {type(v).__name__}")
    elif kind is list and len(v) < minimum:
        raise _Bad(f"key {key!r} must have at least {minimum} item(s)")
    return v


# ---- cross-field consistency -----------------------------------------------------------------


def layout_problems(m: Manifest) -> list[str]:
    """Everything the reader and decoder rely on, checked between fields; [] when consistent."""
    out = _tensor_problems(m)
    need = max(t.offset + t.nbytes for t in m.expert_tensors)
    seen_layers: set[int] = set()
    seen_files: set[str] = set()
    for le in m.layers:
        where = f"layer {le.layer}"
        if le.layer in seen_layers:
            out.append(f"{where}: listed twice")
        seen_layers.add(le.layer)
        bad_path = path_problem(le.file)
        if bad_path:
            out.append(f"{where}: file {le.file!r} {bad_path}")
        elif le.file in seen_files:
            out.append(f"{where}: file {le.file} is shared with another layer")
        seen_files.add(le.file)
        if len(le.experts) != m.num_experts:
            out.append(f"{where}: has {len(le.experts)} experts, num_experts is {m.num_experts}")
        if sorted(le.order) != list(range(len(le.experts))):
            out.append(f"{where}: order is not a permutation of its experts")
        out += _expert_problems(m, le, need)
    return out


def _expert_problems(m: Manifest, le: LayerEntry, need: int) -> list[str]:
    out = []
    for eid, loc in enumerate(le.experts):
        where = f"layer {le.layer} expert {eid}"
        if loc.offset % m.align or loc.span % m.align:
            out.append(f"{where}: offset {loc.offset} / span {loc.span} not {m.align}-aligned")
        if loc.nbytes != need or loc.span < loc.nbytes:
            out.append(
                f"{where}: nbytes {loc.nbytes} / span {loc.span} do not match its {need} "
                "tensor bytes"
            )
        if loc.offset + loc.span > le.file_size:
            out.append(
                f"{where}: bytes {loc.offset}..{loc.offset + loc.span} run past the layer "
                f"file's {le.file_size} bytes"
            )
    by_offset = sorted(range(len(le.experts)), key=lambda e: le.experts[e].offset)
    for a, b in itertools.pairwise(by_offset):
        x, y = le.experts[a], le.experts[b]
        if x.offset + x.span > y.offset:
            out.append(f"layer {le.layer}: experts {a} and {b} overlap at offset {y.offset}")
    return out


def _tensor_problems(m: Manifest) -> list[str]:
    out = []
    names = [t.name for t in m.expert_tensors]
    if len(set(names)) != len(names):
        out.append("expert_tensors: a tensor name is listed twice")
    for t in m.expert_tensors:
        want = math.prod(t.shape) * ITEMSIZE[t.dtype]
        if t.nbytes != want:
            out.append(
                f"expert tensor {t.name}: nbytes {t.nbytes}, but shape {list(t.shape)} of "
                f"{t.dtype} is {want} bytes"
            )
    spans = sorted(m.expert_tensors, key=lambda t: t.offset)
    for a, b in itertools.pairwise(spans):
        if a.offset + a.nbytes > b.offset:
            out.append(f"expert tensors {a.name} and {b.name} overlap")
    return out + _quant_problems(m)


def _quant_problems(m: Manifest) -> list[str]:
    """quant.bits/group_size must describe the tensors: weight uint32 packing bits per value,
    scales/biases one per group; 16-bit stores hold only float weights."""
    by = {t.name: t for t in m.expert_tensors}
    projs = sorted({n.split(".")[0] for n in by})
    out = []
    for p in projs:
        w, s, b = by.get(f"{p}.weight"), by.get(f"{p}.scales"), by.get(f"{p}.biases")
        if w is None:
            out.append(f"expert tensor {p}.weight is missing")
            continue
        if m.bits >= 16:
            if s or b or w.dtype not in FLOAT_DTYPES:
                out.append(
                    f"quant.bits is 16 but {p} is quantized ({w.dtype} weight"
                    f"{', scales' if s else ''}); the manifest does not describe the tensors"
                )
            continue
        if s is None or b is None or w.dtype != "uint32":
            out.append(f"quant.bits is {m.bits} but {p} has no uint32 weight + scales + biases")
            continue
        if s.shape != b.shape or len(w.shape) != 2 or len(s.shape) != 2:
            out.append(f"{p}: scales {list(s.shape)} / biases {list(b.shape)} do not match")
            continue
        in_w = w.shape[1] * 32 // m.bits
        in_s = s.shape[1] * (m.group_size or 0)
        if w.shape[0] != s.shape[0] or in_w != in_s:
            out.append(
                f"{p}: weight {list(w.shape)} at {m.bits} bits holds {in_w} inputs, scales "
                f"{list(s.shape)} at group size {m.group_size} cover {in_s}; quant.bits or "
                "quant.group_size does not describe the tensors"
            )
    return out


def path_problem(rel: str) -> str | None:
    """Why a manifest path may not be used (it must stay inside the store), or None."""
    p = PurePosixPath(rel)
    if not rel or "\0" in rel or "\\" in rel:
        return "is not a plain relative path"
    if p.is_absolute():
        return "is absolute; paths in a store must be relative to it"
    if any(part in ("..", ".", "") for part in rel.split("/")):
        return "leaves the store or is not normalised ('..', '.' or '//')"
    return None
