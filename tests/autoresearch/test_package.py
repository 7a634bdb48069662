"""The autoresearch package itself: names that mean one thing, and what it may use of engine/."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import autoresearch

PACKAGE = Path(autoresearch.__file__).parent
# engine.contract, engine.config, engine.errors and engine.api: the documented surface.
ALLOWED = {"engine.contract", "engine.config", "engine.errors", "engine.api"}


@pytest.mark.parametrize(
    "before",
    [
        "early = []",
        "import autoresearch\nearly = [autoresearch.show, autoresearch.export]",
        "from autoresearch import show, export\nearly = [show, export]",
        "import autoresearch.show, autoresearch.export\nearly = []",
        "from autoresearch.show import show\nfrom autoresearch.export import export\nearly = []",
        "import autoresearch\nautoresearch.load_results\nearly = []",
    ],
)
def test_show_and_export_are_modules_whatever_the_import_order(before: str) -> None:
    """`from autoresearch import show` once gave the function or the module depending on
    whether the submodule had been imported already."""
    check = (
        "import types\n"
        "from autoresearch import show, export\n"
        "import autoresearch.show, autoresearch.export\n"
        "for m in (*early, show, export, autoresearch.show, autoresearch.export):\n"
        "    assert isinstance(m, types.ModuleType), m\n"
        "assert callable(show.show) and callable(export.export)\n"
    )
    proc = subprocess.run([sys.executable, "-c", f"{before}\n{check}"], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def test_public_names_resolve_and_are_not_submodules() -> None:
    for name in autoresearch.__all__:
        value = getattr(autoresearch, name)
        assert not isinstance(value, types.ModuleType), name


def _engine_imports(path: Path) -> set[str]:
    """Every engine module a file imports (`from engine import x` counts as engine.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "engine"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "engine":
            if node.module == "engine":
                found |= {f"engine.{a.name}" for a in node.names}
            else:
                found.add(str(node.module))
    return found


def test_autoresearch_uses_only_the_documented_engine_surface() -> None:
    used = {f.name: _engine_imports(f) for f in sorted(PACKAGE.glob("*.py"))}
    outside = {name: sorted(mods - ALLOWED) for name, mods in used.items() if mods - ALLOWED}
    assert outside == {}
    assert set().union(*used.values()) == ALLOWED  # each one is really used


def test_the_import_check_sees_deep_imports(tmp_path: Path) -> None:
    """The check above can fail: a deep import, plain or lazy inside a function, is seen."""
    f = tmp_path / "x.py"
    f.write_text("from engine import api\ndef g():\n    from engine.store import Store\n")
    assert _engine_imports(f) == {"engine.api", "engine.store"}


def test_docstring_lists_the_engine_surface() -> None:
    doc = autoresearch.__doc__ or ""
    assert all(module in doc for module in ALLOWED)
    import engine.api

    for name in ("read_toml", "store_info", "pack_store", "synthesize_model", "TraceSimulator"):
        assert name in doc and hasattr(engine.api, name)
