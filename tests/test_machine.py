"""Machine fingerprint: every field present and typed; the id ignores the measured bandwidth."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.measure import diskbench, machine


def test_fingerprint_fields_are_present_and_typed(tmp_path: Path) -> None:
    fp = machine.fingerprint(tmp_path, measure_disk=False)
    assert isinstance(fp["cpu_count"], int) and fp["cpu_count"] >= 1
    assert fp["cpu_model"] is None or isinstance(fp["cpu_model"], str)
    assert fp["ram_bytes"] is None or fp["ram_bytes"] > 0
    for key in ("os", "kernel", "machine", "python"):
        assert isinstance(fp[key], str) and fp[key]
    assert set(fp["packages"]) >= {"mlx", "mlx-lm", "numpy", "optuna"}
    assert fp["packages"]["numpy"]  # installed in every environment that runs the tests
    assert fp["git_revision"] is None or isinstance(fp["git_revision"], str)
    assert "disk_device" in fp and "disk_fs" in fp and fp["disk_read_gb_s"] is None
    assert isinstance(fp["id"], str) and len(fp["id"]) == 12


def test_disk_bandwidth_is_measured_once_and_kept_out_of_the_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOE_ENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(machine, "_DISK_BW", {})
    calls: list[Path] = []

    def fake_measure(path: Path) -> float:
        calls.append(path)
        return 1.25

    monkeypatch.setattr(machine, "_measure", fake_measure)
    a = machine.fingerprint(tmp_path, measure_disk=True)
    b = machine.fingerprint(tmp_path, measure_disk=True)
    assert a["disk_read_gb_s"] == b["disk_read_gb_s"] == 1.25 and len(calls) == 1
    assert a["id"] == machine.fingerprint(tmp_path, measure_disk=False)["id"]
    # A fresh process reads the day-long file cache instead of measuring again.
    monkeypatch.setattr(machine, "_DISK_BW", {})
    assert machine.fingerprint(tmp_path)["disk_read_gb_s"] == 1.25 and len(calls) == 1
    assert list((tmp_path / "cache").glob("disk-*.json"))


def test_real_disk_measurement_reads_the_whole_probe_in_the_time_it_took(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rate must be bytes / seconds of the real read: a clock that advances exactly 2 s
    # across the measurement pins the answer to 4 MiB / 2 s.
    monkeypatch.setattr(machine, "DISK_PROBE_BYTES", 4 << 20)  # tiny: tests stay fast
    ticks = iter(range(0, 1000, 2))
    monkeypatch.setattr(diskbench.time, "perf_counter", lambda: float(next(ticks)))
    gb_s = machine._measure(tmp_path)
    if gb_s is None:
        pytest.skip("this filesystem refuses the disk probe (no O_DIRECT)")
    assert gb_s == pytest.approx((4 << 20) / 2 / 1e9)
