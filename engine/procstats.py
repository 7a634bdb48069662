"""This process's and this machine's memory and I/O figures from /proc (Linux), for budgets,
probes and "does it fit in RAM" checks."""

from __future__ import annotations

import os
import resource


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """Peak RSS since the last reset_peak_rss() (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def reset_peak_rss() -> bool:
    """Restart peak-RSS tracking (Linux clear_refs), so a probe's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def disk_read_bytes() -> int:
    """Bytes this process made the kernel fetch from storage (/proc/self/io read_bytes): a
    page-cache hit costs nothing here, so warm and cold buffered runs differ honestly."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _meminfo_bytes(field: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def ram_bytes() -> int | None:
    """Installed RAM (MemTotal), or what sysconf says off Linux; None when neither says."""
    total = _meminfo_bytes("MemTotal")
    if total is not None:
        return total
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_ram_bytes() -> int | None:
    """RAM a new allocation could get now (MemAvailable), for "does the model fit" checks."""
    avail = _meminfo_bytes("MemAvailable")
    return avail if avail is not None else ram_bytes()


M_MMAP_THRESHOLD = -3  # glibc malloc.h
MMAP_THRESHOLD = 1 << 20


def return_large_frees_to_os() -> bool:
    """Make glibc serve every allocation >= 1 MiB with its own mapping, unmapped on free.

    By default glibc raises its mmap threshold to the size of the first large block freed
    (up to 32 MiB), after which expert-sized read buffers and repacked copies come from
    per-thread heaps that keep freed blocks: RSS a memory budget counts (~10% over the budget on
    a 4 GB Kimi-K2-shaped run). Setting the threshold explicitly turns that adjustment off.
    False where the C library has no mallopt (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
