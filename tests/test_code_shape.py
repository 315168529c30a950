"""The Python stays layered: modules with one job, thin CLIs, no borrowed private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "scripts").rglob("*.py"))
MAX_LINES = 600


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every ``from module import name`` of a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        (node.module or "", alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]


def test_there_is_python_to_check() -> None:
    names = {p.name for p in SOURCES}
    assert {"cli.py", "sizing.py", "pgtune.py", "rules.py"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_a_long_module_says_why_at_its_top(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text.count("\n") <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert "Why one module" in docstring, (
        f"{_rel(path)} has {text.count(chr(10))} lines: split it, or say at its top why not "
        "('Why one module ...')"
    )


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_no_module_imports_another_ones_private_names(path: Path) -> None:
    borrowed = [
        f"{module}.{name}"
        for module, name in _imports(path)
        if name.startswith("_") and not name.startswith("__") and "pacs_libre" in module
    ]
    assert not borrowed, f"{_rel(path)} imports private names {borrowed}: make them public"


CLI_MODULES = sorted(p for p in SOURCES if p.name.endswith("_cli.py"))


@pytest.mark.parametrize("path", CLI_MODULES, ids=_rel)
def test_a_cli_module_imports_no_other_cli_module(path: Path) -> None:
    """Shared options live in cli_options, shared logic in the modules the CLIs sit on."""
    others = [m for m, _ in _imports(path) if m.endswith("_cli") and m != f"pacs_libre.{path.stem}"]
    assert not others, f"{_rel(path)} imports {others}: move what it needs out of the CLI"


@pytest.mark.parametrize("path", CLI_MODULES, ids=_rel)
def test_format_is_checked_one_way(path: Path) -> None:
    """Every --format is an enum of cli_options, refused by Typer itself; no hand-made check."""
    text = path.read_text(encoding="utf-8")
    assert '"--format"' not in text, f"{_rel(path)}: declare --format with cli_options"
    assert "--format '" not in text, f"{_rel(path)}: let Typer refuse a bad --format"
