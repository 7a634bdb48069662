"""Every figure a person reads, in human units: one place, so status, show, the live display,
export, errors and plot axes agree (bytes in KiB/MiB/GiB, tok/s, seconds, ratios, shares).

Raw numbers stay raw in the study and in exported files; only what is printed goes through here.
"""

from __future__ import annotations

import math

_BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
# Metrics that are shares of something (0..1): printed as percentages.
SHARES = frozenset(
    {
        "cache_hit_rate",
        "prefetch_precision",
        "prefetch_recall",
        "io_stall_fraction",
        "top1_agreement",
    }
)


def num(v: float) -> str:
    """3-4 significant digits: enough to compare trials, never 16 digits of float noise."""
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}" if abs(v) < 1e-2 else f"{v:.4g}"


def nbytes(v: float) -> str:
    """1.40 GiB, 238.0 MiB, 12.0 KiB, 512 B."""
    if not math.isfinite(v):
        return str(v)
    for unit, size in _BYTE_UNITS:
        if abs(v) >= size:
            digits = 2 if unit == "GiB" else 1
            return f"{v / size:.{digits}f} {unit}"
    return f"{int(v)} B"


def rate(v: float) -> str:
    """Tokens per second, 3 significant digits below 100 (12.3 tok/s, 1234 tok/s)."""
    return f"{v:.3g} tok/s" if abs(v) < 100 else f"{v:.0f} tok/s"


def seconds(v: float) -> str:
    """A duration: 850 us, 12.3 ms, 4.20 s, 10 min 25 s, 1 h 02 min."""
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if a < 1e-3:
        return f"{v * 1e6:.0f} us"
    if a < 1:
        return f"{v * 1e3:.3g} ms"
    if a < 60:
        return f"{v:.3g} s"
    if a < 3600:
        m, s = divmod(round(a), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(round(a) // 60, 60)
    return f"{h} h {m:02d} min"


def ratio(v: float) -> str:
    """A ratio to the baseline: x1.23."""
    return f"x{v:.3g}"


def share(v: float) -> str:
    """A fraction of 1 as a percentage: 71.2%."""
    return f"{100 * v:.1f}%"


def kind(metric: str) -> str:
    """What a metric measures: bytes, rate, seconds, share or number."""
    if metric.endswith("_bytes") or metric.startswith("bytes_"):
        return "bytes"
    if metric.endswith("_tok_s"):
        return "rate"
    if metric.endswith("_s"):
        return "seconds"
    if metric in SHARES:
        return "share"
    return "number"


def metric(name: str, v: float | None) -> str:
    """One metric's value in its unit; '-' when it was not measured (None)."""
    if v is None:
        return "-"
    show = {"bytes": nbytes, "rate": rate, "seconds": seconds, "share": share}
    return show.get(kind(name), num)(float(v))


def metric_pm(name: str, v: float | None, spread: float | None) -> str:
    """'median ± spread' in the metric's unit (the spread left out when zero or unknown)."""
    if v is None:
        return "-"
    if not spread:
        return metric(name, v)
    k = kind(name)
    if k == "rate":
        return f"{v:.3g} ± {spread:.2g} tok/s"
    if k == "number":
        return f"{num(v)} ± {spread:.2g}"
    return f"{metric(name, v)} ± {metric(name, spread)}"


def axis(name: str, values: list[float]) -> tuple[float, str]:
    """(divisor, axis title) for a plot axis of `name`: values / divisor are in the title's unit.

    Bytes get one unit for the whole axis (MiB or GiB by the largest value) so the ticks read
    like the tables; shares become percent, sub-second times milliseconds.
    """
    k = kind(name)
    top = max((abs(v) for v in values), default=0.0)
    if k == "bytes":
        unit, size = ("GiB", 2**30) if top >= 2**30 else ("MiB", 2**20)
        return float(size), f"{name} ({unit})"
    if k == "rate":
        return 1.0, f"{name} (tok/s)"
    if k == "seconds":
        return (1e-3, f"{name} (ms)") if top < 1 else (1.0, f"{name} (s)")
    if k == "share":
        return 0.01, f"{name} (%)"
    return 1.0, name
