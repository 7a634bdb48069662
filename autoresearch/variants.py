"""Store variants: one packed store per (bits, group size, layout), built on first use, reused.

Variants live in this machine's cache dir (autoresearch/cachedir.py) under
`stores/<model>-b<bits>-g<group>-<layout>`; a synthesized model under
`models/<family>-<preset>-s<seed>`. Each machine of a fleet builds its own, on its own disk.
Both are built atomically by the engine (temp dir + rename), so a run killed mid-pack leaves
nothing half-built behind, and workers building the same variant at once both end up with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autoresearch.errors import VariantError
from autoresearch.study_file import StudySpec
from engine import api
from engine.errors import EngineError, StoreExists

DEFAULT_VARIANT = (16, 64, "natural")


class Variants:
    """Resolves a trial's (quant_bits, quant_group_size, layout) to an opened store."""

    def __init__(
        self, spec: StudySpec, progress: bool = False, note: Callable[[str], None] | None = None
    ) -> None:
        self.spec = spec
        self.progress = progress  # a synth progress bar; off while a rich Live display runs
        self.note = note or (lambda _text: None)
        self._cache: dict[tuple[int, int, str], api.StoreInfo] = {}

    def model_dir(self) -> Path:
        """The source checkpoint; a synth model is synthesized here the first time."""
        if self.spec.model_path is not None:
            return self.spec.model_path
        s = self.spec.synth
        assert s is not None
        out = self._root() / "models" / f"{s['family']}-{s['preset']}-s{s['seed']}"
        if not (out / "config.json").is_file():
            self.note(f"synthesizing {s['preset']} {s['family']} model into {out} (once)")
            try:
                api.synthesize_model(
                    out,
                    family=s["family"],
                    preset=s["preset"],
                    seed=s["seed"],
                    progress=self.progress,
                )
            except StoreExists:
                pass  # another worker won the race; its checkpoint is complete
            except EngineError as e:
                raise VariantError(f"{self.spec.path}: model.synth: {e}") from e
        return out

    def _root(self) -> Path:
        try:
            self.spec.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VariantError(
                f"{self.spec.path}: cannot create the cache dir {self.spec.cache_dir} "
                f"({e.strerror}); set study.cache_dir or AUTORESEARCH_CACHE_DIR"
            ) from None
        return self.spec.cache_dir

    def get(self, bits: int | None, group_size: int | None, layout: str | None) -> api.StoreInfo:
        if self.spec.store_path is not None:
            return self._open(self.spec.store_path)
        key = (
            bits or DEFAULT_VARIANT[0],
            group_size or DEFAULT_VARIANT[1],
            layout or DEFAULT_VARIANT[2],
        )
        if key[0] == 16:
            key = (16, DEFAULT_VARIANT[1], key[2])  # group size is meaningless unquantized
        if key in self._cache:
            return self._cache[key]
        model = self.model_dir()
        path = self._root() / "stores" / f"{model.name}-b{key[0]}-g{key[1]}-{key[2]}"
        if not (path / "manifest.json").is_file():
            self.note(f"packing store variant {path.name} (once; reused by later trials)")
            try:
                # No progress bar: rich allows one live display and the study's is running.
                api.pack_store(model, path, bits=key[0], group_size=key[1], layout=key[2])
            except StoreExists:
                pass  # built concurrently by another worker
            except EngineError as e:
                raise VariantError(f"packing variant {path.name} from {model} failed: {e}") from e
        info = self._open(path)
        self._cache[key] = info
        return info

    def _open(self, path: Path) -> api.StoreInfo:
        try:
            return api.store_info(path)
        except EngineError as e:
            raise VariantError(f"{self.spec.path}: store {path}: {e}") from e
