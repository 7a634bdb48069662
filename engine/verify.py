"""Check a packed store against its manifest: every manifest field and every byte.

Manifest: types, ranges, alignment, overlaps, tensor sizes, quantization (engine.manifest);
paths inside the store and regular files only (stat before any open, so a FIFO cannot hang us);
dense files: size and checksum, config.json against the expert tensors, the safetensors header;
profile.json; every expert's checksum. Problems are collected, not raised, so one run names
everything that is wrong; the CLI exits 1 when there is any.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from engine.errors import EngineError
from engine.manifest import checksum, layout_problems, new_hasher, path_problem
from engine.shapes import expert_shape_problems
from engine.stheader import read_safetensors_header
from engine.store import REQUIRED_DENSE, LayerEntry, Store, parse_profile

CHUNK = 16 << 20  # dense files are hashed in chunks of this size


@dataclass
class VerifyReport:
    store: Path
    problems: list[str] = field(default_factory=list)
    layers: int = 0
    experts_checked: int = 0
    bytes_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"store: {self.store}\nlayers: {self.layers}\nexperts_checked: {self.experts_checked}"
            f"\nbytes_checked: {self.bytes_checked}"
        )
        if self.ok:
            return f"{head}\nstatus: ok"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return (
            f"{head}\nstatus: {len(self.problems)} problem(s)\n{lines}\n"
            "re-pack the store (moe-engine pack --force) to repair it"
        )


def verify(store_dir: Path, progress: bool = True) -> VerifyReport:
    report = VerifyReport(Path(store_dir))
    try:
        store = Store.open(store_dir, check=False)
    except EngineError as e:
        report.problems.append(str(e))
        return report
    report.layers = len(store.layers)
    report.problems += layout_problems(store.parsed)
    bad_dense = _check_dense_files(store, report)
    if not bad_dense & set(REQUIRED_DENSE):
        _check_dense_content(store, report)
    _check_profile(store, report)
    total = sum(len(le.experts) for le in store.layers)
    columns = (TextColumn("verifying experts"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("verify", total=total)
        for entry in store.layers:
            _check_layer(store, entry, report)
            bar.advance(task, len(entry.experts))
    return report


def _regular_inside(store: Store, rel: str) -> str | None:
    """Why `rel` may not be opened (outside the store, not a regular file, missing), or None."""
    why = path_problem(rel)
    if why:
        return f"{rel!r} {why}"
    path = store.root / rel
    try:
        if not path.resolve().is_relative_to(store.root.resolve()):
            return f"{rel} is a link leading outside the store"
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"{rel} is missing"
    except (OSError, RuntimeError) as e:
        return f"{rel} cannot be read ({e})"
    return None if stat.S_ISREG(mode) else f"{rel} is not a regular file"


def _check_dense_files(store: Store, report: VerifyReport) -> set[str]:
    """Size and checksum of every dense file the manifest lists; returns the bad ones."""
    bad = set()
    listed = {d.name for d in store.parsed.dense}
    for name in REQUIRED_DENSE:
        if name not in listed:
            report.problems.append(f"manifest: dense file {name} is not listed")
            bad.add(name)
    for d in store.parsed.dense:
        rel = f"dense/{d.name}"
        why = "is not a plain file name" if "/" in d.name else _regular_inside(store, rel)
        if why:
            report.problems.append(f"dense: {why}")
            bad.add(d.name)
            continue
        size = (store.root / rel).stat().st_size
        if size != d.size:
            report.problems.append(f"dense: {rel} is {size} bytes, manifest says {d.size}")
            bad.add(d.name)
            continue
        h = new_hasher()
        try:
            with open(store.root / rel, "rb") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except OSError as e:
            report.problems.append(f"dense: {rel} cannot be read ({e})")
            bad.add(d.name)
            continue
        report.bytes_checked += size
        if h.hexdigest() != d.checksum:
            report.problems.append(
                f"dense: {rel} checksum mismatch (manifest {d.checksum}, file {h.hexdigest()})"
            )
            bad.add(d.name)
    return bad


def _check_dense_content(store: Store, report: VerifyReport) -> None:
    """config.json must build the model the experts belong to; the weights' header must hold."""
    try:
        read_safetensors_header(store.dense_dir / "model.safetensors")
    except EngineError as e:
        report.problems.append(f"dense/model.safetensors: {e}")
    try:
        config = store.config
    except EngineError as e:
        report.problems.append(str(e))
        return
    report.problems += expert_shape_problems(store, config)


def _check_profile(store: Store, report: VerifyReport) -> None:
    p = store.root / "profile.json"
    if not p.exists() and not p.is_symlink():
        return
    why = _regular_inside(store, "profile.json")
    if why:
        report.problems.append(f"profile: {why}")
        return
    try:
        parse_profile(store.root / "profile.json", store.moe_layers, store.num_experts)
    except EngineError as e:
        report.problems.append(str(e))


def _check_layer(store: Store, entry: LayerEntry, report: VerifyReport) -> None:
    why = _regular_inside(store, entry.file)
    if why:
        report.problems.append(f"layer {entry.layer}: {why}")
        return
    path = store.root / entry.file
    by_offset = sorted(range(len(entry.experts)), key=lambda e: entry.experts[e].offset)
    # O_NONBLOCK and fstat: the file may have been swapped for a FIFO since the stat above.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        report.problems.append(f"layer {entry.layer}: {entry.file} cannot be read ({e})")
        return
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            report.problems.append(f"layer {entry.layer}: {entry.file} is not a regular file")
            return
        size = st.st_size
        if size != entry.file_size:
            short = [
                e for e in by_offset if entry.experts[e].offset + entry.experts[e].nbytes > size
            ]
            first = f"; first expert affected: {short[0]}" if short else ""
            report.problems.append(
                f"layer {entry.layer}: {entry.file} is {size} bytes, manifest says "
                f"{entry.file_size} (truncated or overwritten){first}"
            )
        for eid in by_offset:
            loc = entry.experts[eid]
            if loc.offset + loc.nbytes > size:
                continue  # already named by the size problem above
            f.seek(loc.offset)
            data = f.read(loc.nbytes)
            report.experts_checked += 1
            report.bytes_checked += len(data)
            got = checksum(data)
            if got != loc.checksum:
                report.problems.append(
                    f"layer {entry.layer} expert {eid}: checksum mismatch (manifest "
                    f"{loc.checksum}, file {got}) in {entry.file} at offset {loc.offset}"
                )
        # Verifying reads every byte; drop them from the page cache so the next cold run is cold.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
