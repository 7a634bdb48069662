"""Figures in human units, hand-checkable."""

from __future__ import annotations

import pytest

from autoresearch import format as fmt


@pytest.mark.parametrize(
    ("metric", "value", "text"),
    [
        ("memory_bytes", 290226000.0, "276.8 MiB"),
        ("memory_bytes", 1.407e9, "1.31 GiB"),
        ("bytes_read_per_token", 12288, "12.0 KiB"),
        ("page_cache_bytes", 512, "512 B"),
        ("decode_tok_s", 12.3456, "12.3 tok/s"),
        ("decode_tok_s", 1234.5, "1234 tok/s"),
        ("latency_p99_s", 0.01234, "12.3 ms"),
        ("ttft_s", 625.4, "10 min 25 s"),
        ("cache_hit_rate", 0.7123, "71.2%"),
        ("kl_mean", 0.0016123456789, "0.00161"),
        ("tokens", 256.0, "256"),
        ("kl_mean", None, "-"),
    ],
)
def test_every_metric_reads_in_its_unit(metric: str, value: float | None, text: str) -> None:
    assert fmt.metric(metric, value) == text


def test_spread_and_axis_units() -> None:
    assert fmt.metric_pm("decode_tok_s", 12.34, 0.456) == "12.3 ± 0.46 tok/s"
    assert fmt.metric_pm("memory_bytes", 3 * 2**30, 2**20) == "3.00 GiB ± 1.0 MiB"
    assert fmt.metric_pm("kl_mean", 0.25, 0.0) == "0.25"
    assert fmt.axis("memory_bytes", [1.4e9, 2e8]) == (2**30, "memory_bytes (GiB)")
    assert fmt.axis("memory_bytes", [2e8]) == (2**20, "memory_bytes (MiB)")
    assert fmt.axis("latency_p99_s", [0.2]) == (1e-3, "latency_p99_s (ms)")
    assert fmt.ratio(1.23456) == "x1.23" and fmt.seconds(3725) == "1 h 02 min"
