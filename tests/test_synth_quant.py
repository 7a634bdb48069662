"""`synth --quantize` writes exactly what `mlx_lm convert -q` writes from the HF checkpoint,
mlx-lm loads it, `pack` reads it, and writing it takes RAM independent of the model's depth."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.utils import load_model

import engine.synth.hf
from engine.errors import CheckpointError
from engine.pack import pack
from engine.synth.hf import SYNTH_FAMILIES, synthesize
from engine.verify import verify


def _tensors(model_dir: Path) -> dict[str, mx.array]:
    out: dict[str, mx.array] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out |= mx.load(str(f))
    return out


@pytest.fixture(scope="session")
def synth_q4(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    root = tmp_path_factory.mktemp("synth_q4")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = synthesize(root / family, family, "tiny", quantize=4)
        return cache[family]

    return get


@pytest.mark.parametrize("family", SYNTH_FAMILIES)
def test_equals_mlx_lm_convert_q(
    family: str,
    synth_q4: Callable[[str], Path],
    mlx_quantized_checkpoint: Callable[[str], Path],
) -> None:
    ours, theirs = synth_q4(family), mlx_quantized_checkpoint(family)
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    assert any(".switch_mlp." in n and n.endswith(".scales") for n in a)  # stacked, quantized
    for name in a:
        assert (a[name].shape, a[name].dtype) == (b[name].shape, b[name].dtype), name
        # Same bf16 tensors quantized the same way: the bytes match, not just the layout.
        assert mx.array_equal(a[name], b[name]).item(), name
    ca = json.loads((ours / "config.json").read_text())
    cb = json.loads((theirs / "config.json").read_text())
    assert ca == cb and ca["quantization"]["bits"] == 4
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(a)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3"])
def test_loads_in_mlx_lm_and_packs(
    family: str, synth_q4: Callable[[str], Path], tmp_path: Path
) -> None:
    src = synth_q4(family)
    model, config = load_model(src, strict=True)
    logits = model(mx.array([[2, 3, 4]]))
    assert logits.shape == (1, 3, config["vocab_size"]) and bool(mx.all(mx.isfinite(logits)))
    store = pack(src, tmp_path / "store", progress=False)
    assert (store.bits, store.group_size) == (4, 64)  # kept its own quantization, as downloaded
    assert verify(tmp_path / "store").ok


def test_8_bit_and_determinism(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", "mixtral", "tiny", seed=3, quantize=8)
    b = synthesize(tmp_path / "b", "mixtral", "tiny", seed=3, quantize=8)
    c = synthesize(tmp_path / "c", "mixtral", "tiny", seed=4, quantize=8)
    assert json.loads((a / "config.json").read_text())["quantization"]["bits"] == 8
    w = _tensors(a)["model.layers.0.block_sparse_moe.switch_mlp.up_proj.weight"]
    assert w.shape == (16, 128, 128 * 8 // 32)
    shards = sorted(p.name for p in a.glob("*.safetensors"))
    for name in shards:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert any((a / n).read_bytes() != (c / n).read_bytes() for n in shards)
    load_model(a, strict=True)


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(engine.synth.hf, "write_tokenizer", boom)  # after every shard is written
    # A failed write is one line naming the output (engine.synth.hf wraps the OSError).
    with pytest.raises(CheckpointError, match="disk full"):
        synthesize(tmp_path / "m", "qwen3_moe", "tiny", quantize=4)
    assert not list(tmp_path.iterdir())


CHILD = """
import sys
from pathlib import Path
from engine.synth.hf import synthesize
synthesize(Path(sys.argv[1]), "qwen3_moe", "small", layers=int(sys.argv[2]), quantize=4,
           progress=False)
print([ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM")][0])
"""


def test_peak_rss_does_not_grow_with_depth(tmp_path: Path) -> None:
    # Each depth in a fresh child; its own high-water RSS (VmHWM, KiB) is what it held at once.
    peak, size = {}, {}
    for layers in (2, 8):
        out = tmp_path / f"d{layers}"
        run = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), str(layers)],
            capture_output=True,
            text=True,
            check=True,
        )
        peak[layers] = int(run.stdout.split()[-1]) * 1024
        size[layers] = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    extra = size[8] - size[2]  # ~85 MB more written for 6 more layers
    assert extra > 50e6
    assert peak[8] - peak[2] < 0.25 * extra, (peak, size)
