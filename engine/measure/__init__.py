"""Measuring the engine: probes, quality references, routing traces and their simulator,
baselines, the machine fingerprint and disk roofline."""
