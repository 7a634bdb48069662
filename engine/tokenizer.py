"""The tokenizer a store or a checkpoint carries (mlx-lm's loader), or None when it has none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import EngineError, StoreCorrupt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def has_tokenizer(directory: Path) -> bool:
    return any((directory / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(
    directory: Path, error: type[EngineError] = StoreCorrupt, fix: str = "re-pack the store"
) -> Any:
    """The tokenizer in `directory`; one that does not load is `error` (one line saying `fix`),
    not a traceback."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    try:
        return mlx_load_tokenizer(directory)
    except Exception as e:  # tokenizers/transformers raise anything from a bad file
        raise error(
            f"{directory}: the tokenizer does not load ({type(e).__name__}: {str(e)[:200]}); {fix}"
        ) from None


class LazyTokenizer:
    """Loads the tokenizer in `directory` at its first `encode`: a suite whose prompts are all
    token ids never pays for importing transformers."""

    def __init__(self, directory: Path, error: type[EngineError], fix: str) -> None:
        self._args = (directory, error, fix)
        self._tok: Any = None

    def encode(self, text: str) -> list[int]:
        if self._tok is None:
            self._tok = load_tokenizer(*self._args)
        return list(self._tok.encode(text))
