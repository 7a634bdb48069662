"""Check a packed store against its manifest: files, sizes and every expert's checksum.

Problems are collected, not raised, so one run names everything that is wrong; the CLI exits 1
when there is any.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from engine.checkpoint import read_safetensors_header
from engine.errors import CheckpointError, StoreError
from engine.store import LayerEntry, Store


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
        store = Store.open(store_dir)
    except StoreError as e:
        report.problems.append(str(e))
        return report
    report.layers = len(store.layers)
    _check_dense(store, report)
    _check_manifest(store, report)
    total = sum(len(le.experts) for le in store.layers)
    columns = (TextColumn("verifying experts"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("verify", total=total)
        for entry in store.layers:
            _check_layer(store, entry, report)
            bar.advance(task, len(entry.experts))
    return report


def _check_dense(store: Store, report: VerifyReport) -> None:
    for name in ("config.json", "model.safetensors"):
        if not (store.dense_dir / name).is_file():
            report.problems.append(f"dense/{name}: missing")
    st = store.dense_dir / "model.safetensors"
    if st.is_file():
        try:
            header, data_start, _ = read_safetensors_header(st)
            end = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
            )
            if data_start + end != st.stat().st_size:
                report.problems.append(
                    f"dense/model.safetensors: {st.stat().st_size} bytes, header says "
                    f"{data_start + end} (truncated?)"
                )
        except (CheckpointError, KeyError, TypeError) as e:
            report.problems.append(f"dense/model.safetensors: unreadable ({e})")


def _check_manifest(store: Store, report: VerifyReport) -> None:
    """Offsets and sizes the reader relies on: aligned, non-overlapping, covering the tensors."""
    need = max((t.offset + t.nbytes for t in store.expert_tensors), default=0)
    for entry in store.layers:
        if sorted(entry.order) != list(range(len(entry.experts))):
            report.problems.append(f"layer {entry.layer}: order is not a permutation of experts")
        for eid, loc in enumerate(entry.experts):
            where = f"layer {entry.layer} expert {eid}"
            if loc.offset % store.align or loc.span % store.align:
                report.problems.append(f"{where}: offset/span not {store.align}-aligned")
            if loc.nbytes < need or loc.span < loc.nbytes:
                report.problems.append(
                    f"{where}: nbytes {loc.nbytes} / span {loc.span} do not cover its "
                    f"{need} tensor bytes"
                )


def _check_layer(store: Store, entry: LayerEntry, report: VerifyReport) -> None:
    path = store.root / entry.file
    if not path.is_file():
        report.problems.append(f"layer {entry.layer}: {entry.file} is missing")
        return
    size = path.stat().st_size
    by_offset = sorted(range(len(entry.experts)), key=lambda e: entry.experts[e].offset)
    if size != entry.file_size:
        short = [e for e in by_offset if entry.experts[e].offset + entry.experts[e].nbytes > size]
        first = f"; first expert affected: {short[0]}" if short else ""
        report.problems.append(
            f"layer {entry.layer}: {entry.file} is {size} bytes, manifest says "
            f"{entry.file_size} (truncated or overwritten){first}"
        )
    with open(path, "rb") as f:
        for eid in by_offset:
            loc = entry.experts[eid]
            if loc.offset + loc.nbytes > size:
                continue  # already named by the size problem above
            f.seek(loc.offset)
            data = f.read(loc.nbytes)
            report.experts_checked += 1
            report.bytes_checked += len(data)
            crc = f"{zlib.crc32(data):08x}"
            if crc != loc.checksum:
                report.problems.append(
                    f"layer {entry.layer} expert {eid}: checksum mismatch (manifest "
                    f"{loc.checksum}, file {crc}) in {entry.file} at offset {loc.offset}"
                )
        # Verifying reads every byte; drop them from the page cache so the next cold run is cold.
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
