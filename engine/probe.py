"""One honest measurement of a config on a probe suite: the metrics JSON of DESIGN.md.

Each repeat opens a fresh Engine (empty engine cache); cold repeats first evict the store from
the OS page cache, warm ones follow an unmeasured pass. Decode figures are sustained: each
prompt's first `warmup_tokens` decode steps are excluded and the count is reported; when that
leaves no decode step (every prompt's decode_tokens <= warmup), decode_tok_s and the latencies
are null, not 0.0: nothing was measured, and 0 s would rank best on a latency objective.
`memory_bytes` = peak RSS + the store's pages in the page cache; in mmap mode mapped pages
are in both, so it errs high (a budget it passes is met), never low.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine._version import __version__
from engine.config import EngineConfig
from engine.contract import FIGURES
from engine.errors import MemoryBudgetError
from engine.pagecache import evict_all
from engine.reference import Reference, compare
from engine.runtime import Engine, peak_rss, reset_peak_rss
from engine.store import Store
from engine.suite import Suite
from engine.trace import Trace, Tracer

BUDGET_SLACK = 1.02  # a sampled peak this far over memory_budget_bytes is a breach, not a figure

METRICS = FIGURES  # engine/contract.py: the figures every run reports, with their directions


@dataclass
class _Phase:
    """Counter totals of one phase (prefill or decode) summed over prompts."""

    requests: int = 0
    hits: int = 0
    bytes: int = 0  # what the engine asked its reader for
    disk: int = 0  # what the kernel actually fetched from storage
    stall_s: float = 0.0
    predicted: int = 0
    used: int = 0
    correct: int = 0

    def add(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        self.requests += b["expert_requests"] - a["expert_requests"]
        self.hits += b["cache_hits"] - a["cache_hits"]
        self.bytes += b["bytes_read"] - a["bytes_read"]
        self.disk += b["disk_read_bytes"] - a["disk_read_bytes"]
        self.stall_s += b["read_wait_s"] - a["read_wait_s"]  # blocked on reads: the I/O stall
        self.predicted += b.get("prefetch_predicted", 0) - a.get("prefetch_predicted", 0)
        self.used += b.get("prefetch_used", 0) - a.get("prefetch_used", 0)
        self.correct += b.get("prefetch_correct", 0) - a.get("prefetch_correct", 0)


def store_files(store: Store) -> list:
    return [store.root / le.file for le in store.layers] + sorted(
        store.dense_dir.glob("*.safetensors")
    )


def measure_once(
    store: Store,
    config: EngineConfig,
    suite: Suite,
    *,
    cold: bool,
    reference: Reference | None = None,
    trace: bool = False,
) -> tuple[dict[str, Any], Trace | None]:
    """One sample: a fresh engine runs the whole suite. Returns (metrics, trace or None)."""
    if cold:
        evict_all(store_files(store))
    reset_peak_rss()
    with Engine(store, config) as eng:
        tracer = None
        if trace:
            from engine.model import routers

            tracer = Tracer(store.moe_layers, routers(eng.model, eng.family), {
                "moe_layers": list(store.moe_layers), "top_k": eng.top_k,
                "num_experts": store.num_experts, "entry_bytes": eng.entry_bytes,
                "expert_span": store.expert_span, "store": store.fingerprint,
                "suite": suite.fingerprint, "config": config.to_dict(),
            })  # fmt: skip
            eng.provider.tracer = tracer
        prefill, decode = _Phase(), _Phase()
        ttfts, prompt_tokens, prefill_s, lat, warm_excluded, tokens = [], 0, 0.0, [], 0, 0
        decode_all_s = 0.0  # every decode step, warm-up included: the span stall is counted on
        page = 0
        for pi, p in enumerate(suite.prompts):
            c0 = eng.counters()
            mark: dict[str, Any] = {}
            if tracer is not None:
                tracer.prompt, tracer.step = pi, 0

            def on_token(_tok: int, mark: dict[str, Any] = mark) -> None:
                if "c1" not in mark:
                    mark["c1"] = eng.counters()  # prefill ends with the first token
                if tracer is not None:
                    tracer.step += 1

            gen = eng.generate(list(p.ids), p.decode_tokens, on_token=on_token)
            c2 = eng.counters()
            prefill.add(c0, mark["c1"])
            decode.add(mark["c1"], c2)
            ttfts.append(gen.ttft_s)
            prompt_tokens += len(p.ids)
            prefill_s += gen.prefill_s
            w = min(suite.warmup_tokens, len(gen.token_s))
            warm_excluded += w
            lat.extend(gen.token_s[w:])
            decode_all_s += float(sum(gen.token_s))
            tokens += len(gen.tokens)
            page = max(page, eng.page_cache_bytes())
        rss = peak_rss()  # before the quality pass, whose long prefill is not the workload
        quality = compare(reference, eng.model, suite) if reference is not None else {}
        decode_steps = sum(max(p.decode_tokens - 1, 0) for p in suite.prompts)
        compute_path = eng.compute_path
        budget = eng.memory_budget
    if budget is not None and rss + page > budget * BUDGET_SLACK:
        raise MemoryBudgetError(
            f"the run held {rss + page:,} bytes (RSS {rss:,} + the store's page cache "
            f"{page:,}), over its memory budget {budget:,}; this config does not fit it "
            "(lower cache_bytes or prefetch, or raise the budget)"
        )
    decode_s = float(np.sum(lat)) if lat else 0.0
    m: dict[str, Any] = {
        "ttft_s": float(np.median(ttfts)),
        "prefill_tok_s": prompt_tokens / prefill_s if prefill_s > 0 else 0.0,
        "decode_tok_s": len(lat) / decode_s if lat and decode_s > 0 else None,
        "latency_p50_s": float(np.percentile(lat, 50)) if lat else None,
        "latency_p99_s": float(np.percentile(lat, 99)) if lat else None,
        "latency_max_s": float(np.max(lat)) if lat else None,
        # From storage over the whole run per token processed (prompt + generated): page-cache
        # hits are free, so cold and warm differ. The engine's own decode-phase demand follows.
        "bytes_read_per_token": (prefill.disk + decode.disk) / (prompt_tokens + tokens),
        "bytes_requested_per_token": decode.bytes / decode_steps if decode_steps else 0.0,
        "cache_hit_rate": decode.hits / decode.requests if decode.requests else 0.0,
        "prefetch_precision": decode.correct / decode.predicted if decode.predicted else 0.0,
        "prefetch_recall": decode.correct / decode.used if decode.used else 0.0,
        "io_stall_fraction": min(decode.stall_s / decode_all_s, 1.0) if decode_all_s else 0.0,
        "peak_rss_bytes": rss,
        "page_cache_bytes": page,
        "memory_bytes": rss + page,
        "kl_mean": quality.get("kl_mean"),
        "top1_agreement": quality.get("top1_agreement"),
        "tokens": tokens,
        "decode_tokens_measured": len(lat),
        "warmup_tokens_excluded": warm_excluded,
        "prefill_tokens": prompt_tokens,
        "compute_path": compute_path,  # who did the math: engine.kernels ("cpu") or MLX
        "memory_budget_bytes": budget,  # the budget the run held to (None: unbounded)
    }
    return m, (tracer.finish() if tracer is not None else None)


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the samples, their spread (half the range) and the raw samples."""
    out: dict[str, Any] = {}
    spread: dict[str, float] = {}
    raw: dict[str, list[Any]] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        raw[key] = vals
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            med = float(np.median(vals))
            out[key] = int(med) if all(isinstance(v, int) for v in vals) else med
            spread[key] = (max(vals) - min(vals)) / 2
        else:
            out[key] = vals[0]
    out["spread"] = spread
    out["samples"] = raw
    return out


def probe(
    store: Store,
    config: EngineConfig,
    suite: Suite,
    *,
    cold: bool = True,
    repeats: int = 1,
    reference: Reference | None = None,
    trace_path: str | None = None,
    on_repeat: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The full metrics object: medians over repeats plus identity fields."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if not cold:
        measure_once(store, config, suite, cold=False)  # unmeasured: warms the page cache
    samples = []
    for r in range(repeats):
        if on_repeat:
            on_repeat(r)
        m, tr = measure_once(
            store, config, suite, cold=cold, trace=trace_path is not None and r == 0,
            reference=reference if r == 0 else None,
        )  # fmt: skip
        if tr is not None and trace_path is not None:
            tr.save(trace_path)
        samples.append(m)
    # Quality is deterministic (teacher-forced, greedy): measured once, copied to every sample.
    for s in samples[1:]:
        s["kl_mean"], s["top1_agreement"] = samples[0]["kl_mean"], samples[0]["top1_agreement"]
    out = summarize(samples) if repeats > 1 else {**samples[0], "spread": {}, "samples": {}}
    out.update(
        repeats=repeats,
        cold=cold,
        config=config.to_dict(),
        suite=suite.name,
        suite_fingerprint=suite.fingerprint,
        store=str(store.root),
        store_fingerprint=store.fingerprint,
        reference=(reference.kind if reference is not None else None),
        engine_version=__version__,
        time=time.time(),
    )
    return out
