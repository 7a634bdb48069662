"""Machine fingerprint: what a result was measured on (CPU, RAM, OS, disk and its bandwidth).

Every probe and bench result carries one, so a tuned config says which machine it is tuned for.
The `id` hashes only stable hardware/OS fields (never the measured bandwidth, which jitters), so
two runs on one machine share an id. Linux first; elsewhere unknown fields are None.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from engine.procstats import ram_bytes

PACKAGES = ("mlx", "mlx-lm", "numpy", "optuna")
DISK_PROBE_BYTES = 64 << 20  # big enough to leave the drive's own cache, small enough for 2 cores
DISK_CACHE_TTL_S = 24 * 3600
_ID_FIELDS = ("cpu_model", "cpu_count", "ram_bytes", "os", "kernel", "machine", "disk_model")

# Bandwidth per block device for this process: fingerprint() is called once per probe.
_DISK_BW: dict[str, dict[str, Any]] = {}


def fingerprint(disk_path: Path | None = None, measure_disk: bool = True) -> dict[str, Any]:
    """A JSON-ready description of this machine; `disk_path` picks the disk (default: cwd)."""
    path = Path(disk_path) if disk_path is not None else Path.cwd()
    fp: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "ram_bytes": ram_bytes(),
        "os": platform.system(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "packages": package_versions(),
        "git_revision": git_revision(),
    }
    disk = disk_info(path)
    fp.update(disk)
    fp["disk_read_gb_s"] = None
    if measure_disk:
        fp["disk_read_gb_s"] = disk_bandwidth(path, disk.get("disk_device"))
    body = json.dumps({k: fp.get(k) for k in _ID_FIELDS}, sort_keys=True)
    fp["id"] = hashlib.sha256(body.encode()).hexdigest()[:12]
    return fp


# ---- hardware and software ------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Processor")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_revision() -> str | None:
    """HEAD of the repo this package lives in (+'-dirty'), None outside a git checkout."""
    repo = Path(__file__).resolve().parents[2]
    try:
        rev = _git(repo, "rev-parse", "--short=12", "HEAD", check=True)
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no", check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev or None


def _git(repo: Path, *args: str, check: bool) -> str:
    done = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, timeout=5, check=check
    )
    return done.stdout.strip()


# ---- disk ------------------------------------------------------------------------------------


def disk_info(path: Path) -> dict[str, Any]:
    """Block device holding `path`: name, model, rotational, filesystem (None where unknown)."""
    out: dict[str, Any] = {
        "disk_path": str(path),
        "disk_device": None,
        "disk_model": None,
        "disk_rotational": None,
        "disk_fs": None,
    }
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.stat(probe)
    except OSError:
        return out
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    sysdev = Path(f"/sys/dev/block/{major}:{minor}")
    if sysdev.exists():
        real = sysdev.resolve()
        name = real.name
        # A partition's queue/ and device/ live on its parent disk.
        disk = real.parent if (real / "partition").exists() else real
        out["disk_device"] = name
        out["disk_model"] = _read(disk / "device" / "model") or _read(disk / "device" / "name")
        rot = _read(disk / "queue" / "rotational")
        out["disk_rotational"] = rot == "1" if rot is not None else None
    out["disk_fs"], mount_dev = _mount_of(probe)
    if out["disk_device"] is None and mount_dev:
        out["disk_device"] = mount_dev  # tmpfs, overlay, network: no /sys block device
    return out


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip() or None
    except OSError:
        return None


def _mount_of(path: Path) -> tuple[str | None, str | None]:
    """(filesystem type, device) of the longest /proc/mounts entry containing `path`."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None, None
    target = str(path.resolve())
    best: tuple[int, str | None, str | None] = (-1, None, None)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        dev, mnt, fs = parts[0], parts[1].replace("\\040", " "), parts[2]
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) > best[0]:
            best = (len(mnt), fs, dev)
    return best[1], best[2]


def _cache_file(device: str) -> Path:
    base = os.environ.get("MOE_ENGINE_CACHE_DIR") or Path.home() / ".cache" / "moe-engine"
    return Path(base) / f"disk-{device.replace('/', '_')}.json"


def disk_bandwidth(path: Path, device: str | None = None) -> float | None:
    """Cold sequential O_DIRECT read GB/s (1 MiB x 4 threads) of a temp file on `path`'s disk.

    Cached per device for the process and for a day on disk, so a probe pays for it once.
    None when the disk cannot be measured (read-only, tmpfs without O_DIRECT, ...).
    """
    key = device or str(path)
    if key in _DISK_BW:
        return _DISK_BW[key]["gb_s"]
    cache = _cache_file(key)
    try:
        hit = json.loads(cache.read_text())
        if time.time() - float(hit["time"]) < DISK_CACHE_TTL_S:
            _DISK_BW[key] = hit
            return hit["gb_s"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    gb_s = _measure(path)
    entry = {"gb_s": gb_s, "time": time.time(), "device": key}
    _DISK_BW[key] = entry
    if gb_s is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(entry))
        except OSError:
            pass  # a read-only home only costs a re-measure next process
    return gb_s


def _measure(path: Path) -> float | None:
    from engine.errors import EngineError
    from engine.measure.diskbench import make_test_file, measure_read_bandwidth

    where = path if path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        with tempfile.TemporaryDirectory(prefix=".moe-disk-", dir=where) as d:
            f = make_test_file(Path(d) / "probe.bin", DISK_PROBE_BYTES)
            for mode in ("direct", "buffered"):  # tmpfs refuses O_DIRECT
                try:
                    return measure_read_bandwidth(f, 1 << 20, 4, mode, DISK_PROBE_BYTES)
                except (EngineError, OSError):
                    continue
    except OSError as e:
        print(f"note: disk bandwidth of {where} not measured ({e})", file=sys.stderr)
    return None
