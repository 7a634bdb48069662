"""Every family that streams: greedy tokens and logits equal mlx-lm's own float32 model.

Each family is built by `engine.synth.tiny` (mlx-lm model, tiny config, planted routing,
mlx-community layout), packed, and run under three knob combinations. The combinations rotate
with the family (a Latin square over cache size x io_mode x prefetch), so every family sees each
level of each knob and, across families, every pair of levels is covered.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models.cache import ArraysCache, KVCache, make_prompt_cache

from engine.checkpoint import open_checkpoint
from engine.cli.families import render, stacked_expert_types, statuses
from engine.config import EngineConfig
from engine.cpu_linear import use_cpu_linears
from engine.errors import CheckpointError, UnsupportedModel
from engine.families import (
    BlockRouter,
    build_skeleton,
    expert_attr,
    get_experts,
    get_top_k,
    moe_blocks,
    set_top_k,
)
from engine.generate import Generation, generate
from engine.hf_experts import sanitize_map
from engine.model import load_reference
from engine.pack import pack
from engine.runtime import Engine
from engine.store import Store
from engine.streaming import StreamingSwitchGLU
from engine.synth.tiny import SYNTH_FAMILIES, build_model, synthesize, synthesize_family
from engine.synth.to_hf import hf_layouts

PROMPT = [5, 9, 17, 33, 65, 101, 7, 7, 12, 250, 3, 44]
N_NEW = 5
TOL = 1e-4
REQUIRED = ("qwen3_5_moe", "gpt_oss", "glm4_moe", "minimax", "llama4", "qwen3_next", "deepseek_v3")
CACHE = ("none", "some", "all")
IO = ("direct", "buffered", "mmap")
PREFETCH = ("none", "next_layer", "previous_token")


@pytest.fixture(scope="session")
def generic(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., tuple[Path, Store]]:
    """generic(family, bits=16) -> (mlx-layout checkpoint, its 16-bit store), built once."""
    root = tmp_path_factory.mktemp("generic")
    cache: dict[tuple[str, int], tuple[Path, Store]] = {}

    def get(family: str, bits: int = 16) -> tuple[Path, Store]:
        if (family, bits) not in cache:
            ckpt = synthesize(root / f"{family}-{bits}", family, bits=bits)
            store = pack(ckpt, root / f"{family}-{bits}-store", progress=False)
            cache[family, bits] = (ckpt, store)
        return cache[family, bits]

    return get


def _same(gen: Generation, ref: Generation) -> None:
    assert gen.tokens == ref.tokens
    diff = max(float(np.abs(a - b).max()) for a, b in zip(gen.logits, ref.logits, strict=True))
    assert diff <= TOL, f"max |dlogit| = {diff}"


def _knobs(family: str) -> list[tuple[str, str, str]]:
    s = SYNTH_FAMILIES.index(family) % 3
    return [(CACHE[r], IO[(r + s) % 3], PREFETCH[(r + 2 * s) % 3]) for r in range(3)]


def test_enough_families_stream_including_the_seed_ones() -> None:
    assert len(SYNTH_FAMILIES) >= 15
    assert set(REQUIRED) <= set(SYNTH_FAMILIES)
    pairs = {(c, i, p) for f in SYNTH_FAMILIES for c, i, p in _knobs(f)}
    for a, b in ((0, 1), (0, 2), (1, 2)):  # pairwise coverage of the three knobs
        assert len({(t[a], t[b]) for t in pairs}) == 9


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_family_streams_like_mlx_lm(
    generic: Callable[..., tuple[Path, Store]], family: str
) -> None:
    ckpt, store = generic(family)
    ref = generate(load_reference(ckpt), PROMPT, N_NEW, keep_logits=True)
    total = None
    for i, (size, io_mode, prefetch) in enumerate(_knobs(family)):
        cfg = EngineConfig(
            io_mode=io_mode,
            prefetch=prefetch,
            cache_policy=("lru", "lfu")[i % 2],
            read_chunk_bytes=8192,
            io_threads=2,
        )
        if total is None:
            with Engine(store, cfg.replace(cache_bytes=0)) as e:
                total = e.entry_bytes * len(store.layers) * store.num_experts
        cache = {"none": 0, "some": total // 4, "all": total}[size]
        with Engine(store, cfg.replace(cache_bytes=cache)) as engine:
            blocks = [b for *_, b in moe_blocks(engine.model)]
            assert all(isinstance(get_experts(b), StreamingSwitchGLU) for b in blocks)
            gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
            hits = engine.counters()["cache_hits"]
        _same(gen, ref)
        if size == "none":
            assert hits == 0


class _Record(nn.Module):
    """Stands in for a stacked expert module: keeps what mlx-lm's block passes it."""

    def __init__(self, inner: nn.Module, sink: list[tuple[mx.array, mx.array]]) -> None:
        super().__init__()
        self.inner = inner
        self._sink = sink

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        self._sink.append((x, indices))
        return self.inner(x, indices)


# longcat_flash hands its "zero" (identity) experts to the expert module as expert 0.
@pytest.mark.parametrize("family", [f for f in SYNTH_FAMILIES if f != "longcat_flash"])
def test_router_scores_pick_the_experts_mlx_lm_routes_to(family: str) -> None:
    """next_layer prefetch guesses with `BlockRouter`, found generically on each family's
    block: on the hidden state the block really sees, its top-k is mlx-lm's own choice."""
    model, _ = build_model(family)
    _, _, block = moe_blocks(model)[-1]
    attr = expert_attr(block)
    sink: list[tuple[mx.array, mx.array]] = []
    inner = block[attr]
    setattr(block, attr, _Record(inner, sink))
    model(mx.array([PROMPT]))
    setattr(block, attr, inner)
    x, indices = sink[0]
    k = indices.shape[-1]
    want = np.sort(np.array(indices).reshape(-1, k), axis=-1)
    rows = x.reshape(-1, x.shape[-1])
    scores = BlockRouter(block)(rows)
    assert np.array_equal(np.sort(np.argsort(-scores, axis=-1)[:, :k], axis=-1), want)
    # On the CPU path the router is a CpuLinear and guesses are made on the host, from numpy.
    use_cpu_linears(block)
    scores = BlockRouter(block)(np.array(rows.astype(mx.float32)))
    assert np.array_equal(np.sort(np.argsort(-scores, axis=-1)[:, :k], axis=-1), want)


@pytest.mark.parametrize("family", ["gpt_oss", "qwen3_5_moe"])
def test_quantized_mlx_community_checkpoint_streams_like_mlx_lm(
    generic: Callable[..., tuple[Path, Store]], family: str
) -> None:
    """gpt_oss: 4-bit experts plus float per-expert biases, its clamped swiglu; qwen3_5_moe:
    the hybrid seed model as mlx-community ships it."""
    ckpt, store = generic(family, bits=4)
    assert store.bits == 4
    names = {t.name for t in store.expert_tensors}
    assert ("gate_proj.bias" in names) == (family == "gpt_oss")
    ref = generate(load_reference(ckpt), PROMPT, N_NEW, keep_logits=True)
    with Engine(store, EngineConfig(prefetch="next_layer")) as engine:
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
    _same(gen, ref)


def test_requantized_store_keeps_biases_exact(
    generic: Callable[..., tuple[Path, Store]], tmp_path: Path
) -> None:
    ckpt, _ = generic("gpt_oss")
    store = pack(ckpt, tmp_path / "q4", bits=4, group_size=64, progress=False)
    src = mx.load(str(ckpt / "model.safetensors"))
    layer = store.layers[0]
    loc = layer.experts[3]
    with open(store.root / layer.file, "rb") as f:
        f.seek(loc.offset)
        w = store.decode(f.read(loc.nbytes))
    stacked = f"{layer.block}.experts"
    assert mx.array_equal(w["down_proj.bias"], src[f"{stacked}.down_proj.bias"][3])
    q, s, b = mx.quantize(src[f"{stacked}.up_proj.weight"][3], group_size=64, bits=4)
    assert mx.array_equal(w["up_proj.weight"], q) and mx.array_equal(w["up_proj.scales"], s)
    assert mx.array_equal(w["up_proj.biases"], b)


@pytest.mark.parametrize("family", ["gpt_oss", "glm4_moe", "qwen3_5_moe"])
def test_experts_per_token_reaches_the_family_router(
    generic: Callable[..., tuple[Path, Store]], family: str
) -> None:
    ckpt, store = generic(family)
    ref_model = load_reference(ckpt)
    for _, _, block in moe_blocks(ref_model):
        set_top_k(block, 1)
    ref = generate(ref_model, PROMPT, N_NEW, keep_logits=True)
    with Engine(store, EngineConfig(experts_per_token=1)) as engine:
        assert engine.top_k == 1
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
        one = engine.counters()["expert_requests"]
    _same(gen, ref)
    assert get_top_k(moe_blocks(load_reference(ckpt))[0][2]) == 2  # the model's own k is 2
    with Engine(store, EngineConfig()) as engine:
        engine.generate(PROMPT, N_NEW)
        assert engine.counters()["expert_requests"] > one  # k=1 really fetches fewer experts


@pytest.mark.parametrize("family", ["qwen3_5_moe", "jamba"])
def test_hybrid_state_lives_in_mlx_lm_cache_objects(
    generic: Callable[..., tuple[Path, Store]], family: str
) -> None:
    _, store = generic(family)
    with Engine(store, EngineConfig()) as engine:
        kinds = {type(c) for c in make_prompt_cache(engine.model)}
    assert any(issubclass(k, ArraysCache) for k in kinds)  # recurrent / linear-attention state
    assert any(issubclass(k, KVCache) for k in kinds)  # the full-attention layers


def test_families_lists_every_stacked_expert_type() -> None:
    types = stacked_expert_types()
    assert {"qwen3_5_moe", "gpt_oss", "kimi_vl", "qwen3_vl_moe", "nemotron_h"} <= types
    assert "llama" not in types and "qwen3" not in types
    rows = {name: (ok, why) for name, ok, why in statuses()}
    assert {n for n, (ok, _) in rows.items() if ok} == set(SYNTH_FAMILIES)
    assert rows["gemma4_text"][0] is False and "router" in rows["gemma4_text"][1]
    text = render()
    assert f"{len(SYNTH_FAMILIES)} of {len(types)}" in text
    assert len(text.splitlines()) == len(types) + 1


def test_families_command(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["families"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("qwen3_5_moe "))
    assert "streams" in line


SAME = {p: p for p in ("gate_proj", "up_proj", "down_proj")}


def _to_hf(ckpt: Path, out: Path, hf: dict[str, str]) -> Path:
    """The mlx-layout checkpoint with its stacked experts split into HF per-expert tensors."""
    shutil.copytree(ckpt, out)
    weights = mx.load(str(out / "model.safetensors"))
    for name in [n for n in weights if ".switch_mlp." in n]:
        stacked = weights.pop(name)
        block, rest = name.split(".switch_mlp.")
        proj, part = rest.split(".")
        for e in range(stacked.shape[0]):
            weights[f"{block}.experts.{e}.{hf[proj]}.{part}"] = stacked[e]
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    return out


@pytest.mark.parametrize("family", sorted(hf_layouts()))
def test_hf_checkpoint_maps_through_mlx_lm_sanitize(tmp_path: Path, family: str) -> None:
    """No key table: mlx-lm's own sanitize says which HF tensor (per-expert, or a fused
    gate_up_proj split and maybe transposed) is which expert's projection; mlx-lm loading the
    same HF directory is the reference."""
    src = synthesize(tmp_path / "hf", family, layout="hf")
    opened = open_checkpoint(src)
    assert opened.layout == "hf" and opened.hf_names is not None
    part = opened.expert_parts(opened.blocks[0], 3)[0]  # expert 3's gate_proj
    if hf_layouts()[family]["experts"] == "per_expert":
        assert part.index is None and part.view is None and ".experts.3." in part.ref.name
    else:
        assert part.index == 3 and part.view is not None and "gate_up_proj" in part.ref.name
    store = pack(src, tmp_path / "store", progress=False)
    ref = generate(load_reference(src), PROMPT, N_NEW, keep_logits=True)
    with Engine(store, EngineConfig(prefetch="next_layer", cache_bytes=100_000)) as engine:
        gen = engine.generate(PROMPT, N_NEW, keep_logits=True)
    _same(gen, ref)


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "deepseek_v3"])
def test_sanitize_map_agrees_with_the_key_tables(
    tiny_checkpoint: Callable[[str], Path], family: str
) -> None:
    """On engine.synth.hf's HF checkpoints, the sanitize mapping finds exactly the table's names."""
    ckpt = open_checkpoint(tiny_checkpoint(family))
    skeleton = build_skeleton(ckpt.config)
    per = {n: ckpt.tensors[n].shape for n in ckpt.tensors if ".experts." in n}
    targets = [b.stacked_key(p) for b in ckpt.blocks for p in ckpt.projections]
    mapping = sanitize_map(skeleton, per, targets, ckpt.num_experts, "test")
    for b in ckpt.blocks:
        for p in ckpt.projections:
            expected = [ckpt.family.hf_expert_key(b.path, e, p) for e in range(ckpt.num_experts)]
            assert [s.name for s in mapping[b.stacked_key(p)]] == expected
            assert all(s.index is None and s.view is None for s in mapping[b.stacked_key(p)])


def test_hf_names_sanitize_does_not_know_are_refused(
    generic: Callable[..., tuple[Path, Store]], tmp_path: Path
) -> None:
    """minimax's HF experts are w1/w2/w3: gate_proj names stack into nothing, and pack says so."""
    ckpt, _ = generic("minimax")
    bad = _to_hf(ckpt, tmp_path / "hf", SAME)
    with pytest.raises(CheckpointError, match=r"/hf: layer 0 projection gate_proj: no source"):
        pack(bad, tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()


def test_interleaved_expert_tensors_are_refused_naming_them() -> None:
    """gpt_oss's HF gate_up_proj interleaves gate and up rows: not a cut, so pack refuses."""
    model, _ = build_model("gpt_oss")
    shapes = {"model.layers.0.mlp.experts.gate_up_proj.weight": (8, 128, 64)}
    target = "model.layers.0.mlp.experts.gate_proj.weight"
    with pytest.raises(CheckpointError, match=r"gate_proj.weight from the source by more than"):
        sanitize_map(model, shapes, [target], 8, "interleaved")


def test_unknown_tiny_family_and_preset_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="no tiny config for family 'llama'"):
        synthesize(tmp_path / "x", "llama")
    with pytest.raises(CheckpointError, match="'gpt_oss' is synthesized at preset 'tiny' only"):
        synthesize_family(tmp_path / "y", "gpt_oss", preset="small")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_synth_cli_builds_a_generic_family(tmp_path: Path) -> None:
    from engine.cli import main

    assert main(["synth", str(tmp_path / "m"), "--family", "qwen3_5_moe"]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "qwen3_5_moe" and "text_config" in cfg
    assert (tmp_path / "m" / "probe_suite.toml").is_file()


def test_hf_names_of_a_family_synth_does_not_write_are_not_guessed() -> None:
    from engine.families import Family, family_for

    fam = family_for({"model_type": "gpt_oss"})
    assert fam == Family("gpt_oss") and not fam.has_hf_names
    with pytest.raises(UnsupportedModel, match="gpt_oss: HF per-expert key names are not known"):
        fam.hf_expert_key("model.layers.0.mlp", 0, "gate_proj")


def test_hf_layout_only_where_the_names_are_known(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel, match="HF key names of 'gpt_oss' are not known"):
        synthesize(tmp_path / "g", "gpt_oss", layout="hf")
    with pytest.raises(CheckpointError, match="layout must be 'mlx' or 'hf'"):
        synthesize(tmp_path / "g", "minimax", layout="gguf")
    assert not (tmp_path / "g").exists()
    from engine.cli import main

    assert main(["synth", str(tmp_path / "q"), "--family", "qwen3_5_moe", "--layout", "hf"]) == 0
    assert open_checkpoint(tmp_path / "q").layout == "hf"
    assert main(["synth", str(tmp_path / "m"), "--family", "mixtral", "--layout", "mlx"]) == 0
    assert open_checkpoint(tmp_path / "m").layout == "stacked"
