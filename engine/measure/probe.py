"""One honest measurement of a config on a probe suite: the metrics JSON (docs/architecture.md).

Each repeat opens a fresh Engine (empty engine cache); cold repeats first evict the store from
the OS page cache, warm ones follow an unmeasured pass. How ttft_s, decode_tok_s, the latencies
and cache_hit_rate are computed: engine.measure.metrics (the one definition).
`memory_bytes` = peak RSS + the store's pages in the page cache; in mmap mode mapped pages
are in both, so it errs high (a budget it passes is met), never low.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from engine._version import __version__
from engine.config import EngineConfig
from engine.contract import FIGURES
from engine.errors import MemoryBudgetError
from engine.measure.metrics import Phase, timing
from engine.measure.reference import Reference, compare
from engine.measure.trace import Trace, Tracer
from engine.pagecache import evict_all
from engine.procstats import peak_rss, reset_peak_rss
from engine.runtime import Engine
from engine.store import Store
from engine.suite import Suite

TIMING = (
    "ttft_s",
    "prefill_tok_s",
    "decode_tok_s",
    "latency_p50_s",
    "latency_p99_s",
    "latency_max_s",
)
COUNTS = ("tokens", "decode_tokens_measured", "warmup_tokens_excluded", "prefill_tokens")
BUDGET_SLACK = 1.02  # a sampled peak this far over memory_budget_bytes is a breach, not a figure

METRICS = FIGURES  # engine/contract.py: the figures every run reports, with their directions


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

            tracer = Tracer(
                store.moe_layers,
                routers(eng.model, eng.family),
                {
                    "moe_layers": list(store.moe_layers),
                    "top_k": eng.top_k,
                    "num_experts": store.num_experts,
                    "entry_bytes": eng.entry_bytes,
                    "expert_span": store.expert_span,
                    "store": store.fingerprint,
                    "suite": suite.fingerprint,
                    "config": config.to_dict(),
                },
            )
            eng.provider.tracer = tracer
        prefill, decode = Phase(), Phase()
        gens = []
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
            gens.append(gen)
            decode_all_s += float(sum(gen.token_s))
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
    t = timing(gens, suite.warmup_tokens)
    m: dict[str, Any] = {
        **{k: t[k] for k in TIMING},
        "ttft_by_prompt_tokens": t["ttft_by_prompt_tokens"],
        # From storage over the whole run per token processed (prompt + generated): page-cache
        # hits are free, so cold and warm differ. The engine's own decode-phase demand follows.
        "bytes_read_per_token": (prefill.disk + decode.disk) / (t["prefill_tokens"] + t["tokens"]),
        "bytes_requested_per_token": decode.bytes / decode_steps if decode_steps else 0.0,
        # What a decode step fetched from storage: the figure a disk-bound decode divides into
        # the disk's bandwidth (bytes_read_per_token spreads the prompts' reads over them too).
        "decode_bytes_read_per_token": decode.disk / decode_steps if decode_steps else 0.0,
        "cache_hit_rate": decode.cache_hit_rate,
        "prefetch_precision": decode.prefetch_precision,
        "prefetch_recall": decode.prefetch_recall,
        "io_stall_fraction": min(decode.stall_s / decode_all_s, 1.0) if decode_all_s else 0.0,
        "peak_rss_bytes": rss,
        "page_cache_bytes": page,
        "memory_bytes": rss + page,
        "kl_mean": quality.get("kl_mean"),
        "top1_agreement": quality.get("top1_agreement"),
        **{k: t[k] for k in COUNTS},
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
        if all(isinstance(v, dict) for v in vals):  # e.g. ttft_by_prompt_tokens: per key
            out[key] = {k: float(np.median([v[k] for v in vals])) for k in vals[0]}
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
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
            store,
            config,
            suite,
            cold=cold,
            trace=trace_path is not None and r == 0,
            reference=reference if r == 0 else None,
        )
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
