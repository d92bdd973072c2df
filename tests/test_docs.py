"""The front door stays true: the README's Python example runs, and every name the docs' Python blocks import
from v2t_jax (and every attribute they use of an imported module) exists."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


def _names_used(code: str) -> list[tuple[str, str]]:
    """(module, name) for each `from v2t_jax... import name` and each `alias.attr` of an imported v2t_jax module."""
    tree = ast.parse(code)
    modules, out = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("v2t_jax"):
            for a in node.names:
                out.append((node.module, a.name))
                full = f"{node.module}.{a.name}"
                try:
                    importlib.import_module(full)
                    modules[a.asname or a.name] = full
                except ImportError:
                    pass
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            out.append((modules[node.value.id], node.attr))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_name_the_docs_import_exists(page):
    missing = []
    for code in _python_blocks(page):
        for module, name in _names_used(code):
            if not hasattr(importlib.import_module(module), name):
                try:
                    importlib.import_module(f"{module}.{name}")
                except ImportError:
                    missing.append(f"{module}.{name}")
    assert not missing, f"{page.name} uses names v2t_jax does not have: {missing}"


def test_the_check_sees_a_renamed_name():
    assert ("v2t_jax.search.drivers", "invert_nowhere") in _names_used(
        "from v2t_jax.search import drivers\ndrivers.invert_nowhere(1)\n"
    )
    assert not hasattr(importlib.import_module("v2t_jax.search.drivers"), "invert_nowhere")


def test_the_readmes_python_example_runs():
    """The README's Python API block, as written: the shipped model inverts one passage."""
    (block,) = [b for b in _python_blocks(ROOT / "README.md") if "load_model" in b]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert isinstance(scope["texts"], list) and len(scope["texts"]) == 1 and scope["texts"][0].strip()
