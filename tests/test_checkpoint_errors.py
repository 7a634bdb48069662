"""Every bad input to `pack` gets its own clear error, and a failed pack leaves nothing behind."""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest

from engine import cli
from engine import pack as pack_mod
from engine.checkpoint import open_checkpoint
from engine.errors import CheckpointError, StoreError, StoreExists, UnsupportedModel
from engine.pack import pack

EXPERT_KEY = "model.layers.1.mlp.experts.5.up_proj.weight"  # qwen3_moe, every layer is MoE


@pytest.fixture
def ckpt(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of the tiny qwen3_moe checkpoint, free to break."""
    return Path(shutil.copytree(tiny_checkpoint("qwen3_moe"), tmp_path / "ckpt"))


def edit_config(ckpt: Path, **changes: object) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def rewrite_tensor(ckpt: Path, key: str, value: mx.array | None) -> None:
    """Replace (or with None drop) one tensor in whichever shard holds it."""
    shard = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"][key]
    weights = mx.load(str(ckpt / shard))
    if value is None:
        del weights[key]
    else:
        weights[key] = value
    mx.save_safetensors(str(ckpt / shard), weights)


def leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(name))


def test_missing_config(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        pack(ckpt, tmp_path / "s", progress=False)


def test_invalid_config_json(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        pack(ckpt, tmp_path / "s", progress=False)


def test_unknown_model_type(ckpt: Path, tmp_path: Path) -> None:
    edit_config(ckpt, model_type="llama")
    with pytest.raises(UnsupportedModel, match="'llama' is not supported"):
        pack(ckpt, tmp_path / "s", progress=False)


def test_inconsistent_config_names_the_key(ckpt: Path, tmp_path: Path) -> None:
    edit_config(ckpt, num_experts_per_tok=99)
    with pytest.raises(CheckpointError, match="'num_experts_per_tok'"):
        pack(ckpt, tmp_path / "s", progress=False)
    edit_config(ckpt, num_experts_per_tok=4, hidden_size="wide")
    with pytest.raises(CheckpointError, match="'hidden_size'"):
        open_checkpoint(ckpt)


def test_missing_expert_tensor_names_layer_expert_projection(ckpt: Path, tmp_path: Path) -> None:
    rewrite_tensor(ckpt, EXPERT_KEY, None)
    with pytest.raises(CheckpointError, match="layer 1 expert 5 projection up_proj") as e:
        pack(ckpt, tmp_path / "s", progress=False)
    assert EXPERT_KEY in str(e.value)


def test_shape_disagreeing_with_config(ckpt: Path, tmp_path: Path) -> None:
    rewrite_tensor(ckpt, EXPERT_KEY, mx.zeros((64, 128), dtype=mx.bfloat16))
    with pytest.raises(CheckpointError, match=r"has shape \[64, 128\], expected \[128, 128\]") as e:
        pack(ckpt, tmp_path / "s", progress=False)
    assert EXPERT_KEY in str(e.value)


def test_pickle_weights_refused(ckpt: Path, tmp_path: Path) -> None:
    for f in ckpt.glob("*.safetensors*"):
        f.unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="safetensors") as e:
        pack(ckpt, tmp_path / "s", progress=False)
    assert "pytorch_model.bin" in str(e.value) and "convert" in str(e.value)


def test_missing_shard_named(ckpt: Path, tmp_path: Path) -> None:
    (ckpt / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003"):
        pack(ckpt, tmp_path / "s", progress=False)


def test_existing_store_refused_without_force(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tiny_checkpoint("qwen3_moe"), tmp_path / "store"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(StoreExists, match="--force"):
        pack(src, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    assert cli.main(["pack", str(src), str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["pack", str(src), str(out), "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert leftovers(tmp_path, "store") == ["store"]


# 100 kB runs out inside dense/model.safetensors, 1.5 MB inside the expert files.
@pytest.mark.parametrize("free_bytes", [100_000, 1_500_000])
def test_full_disk_mid_pack_leaves_nothing(
    free_bytes: int,
    tiny_checkpoint: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = pack_mod._write
    budget = {"left": free_bytes}
    calls = {"experts": 0}

    def filling_write(f, data) -> None:  # type: ignore[no-untyped-def]
        if budget["left"] < len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        budget["left"] -= len(data)
        calls["experts"] += "experts" in str(f.name)
        real_write(f, data)

    monkeypatch.setattr(pack_mod, "_write", filling_write)
    with pytest.raises(StoreError, match="disk is full") as e:
        pack(tiny_checkpoint("qwen3_moe"), tmp_path / "store", progress=False)
    assert isinstance(e.value.__cause__, OSError)
    assert (calls["experts"] > 0) == (free_bytes > 1_000_000)
    assert leftovers(tmp_path, "store") == []


def test_failure_while_writing_experts_leaves_nothing(
    tiny_checkpoint: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> list[bytes]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack_mod, "quantize_expert_tensor", boom)
    with pytest.raises(StoreError, match="disk is full"):
        pack(tiny_checkpoint("qwen3_moe"), tmp_path / "store", bits=4, progress=False)
    assert leftovers(tmp_path, "store") == []


def test_bad_variant_parameters(tiny_checkpoint: Callable[[str], Path], tmp_path: Path) -> None:
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="bits"):
        pack(tiny_checkpoint("qwen3_moe"), tmp_path / "s", bits=5, progress=False)
    with pytest.raises(ConfigError, match="layout"):
        pack(tiny_checkpoint("qwen3_moe"), tmp_path / "s", layout="random", progress=False)


def test_more_experts_than_config_says(ckpt: Path, tmp_path: Path) -> None:
    edit_config(ckpt, num_experts=8)
    with pytest.raises(CheckpointError, match=r"is expert \d+, but config\.json key 'num_experts'"):
        pack(ckpt, tmp_path / "s", progress=False)
