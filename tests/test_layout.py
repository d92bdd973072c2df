"""The package's layers (docs/architecture.md): every module imports only from its own layer and the layers
below it, those imports inside functions included, and the packages import one another in no circle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "v2t_jax"

# top to bottom; a top-level module by its name, a package by its folder
LAYERS = [
    {"cli", "commands"},
    {"audit", "runs", "training", "weights", "export", "bench"},
    {"api"},
    {"bundle"},
    {"search"},
    {"models", "data", "vocabulary", "evaluate", "metrics"},
    {"errors", "paths", "assets", "outputs", "parallel", "profiling", "__init__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _arrows(root: Path = ROOT) -> dict[tuple[str, str], int]:
    """(importing module, imported module) -> line, for every import of a v2t_jax module anywhere in a module."""
    mods, out = _modules(root), {}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("v2t_jax"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]  # fmt: skip
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("v2t_jax")]
            else:
                continue
            for target in targets:
                if target in mods and target != name:
                    out.setdefault((name, target), node.lineno)
    return out


def test_every_module_belongs_to_a_layer():
    assert {_unit(m) for m in _modules()} <= set(RANK), {_unit(m) for m in _modules()} - set(RANK)


def _upward(arrows: dict[tuple[str, str], int]) -> list[str]:
    return [f"{a} (line {line}) imports {b}" for (a, b), line in arrows.items() if RANK[_unit(a)] > RANK[_unit(b)]]


def test_no_import_runs_back_up_a_layer():
    up = _upward(_arrows())
    assert not up, up


def test_packages_import_one_another_in_no_circle():
    graph: dict[str, set[str]] = {}
    for a, b in _arrows():
        if _unit(a) != _unit(b):
            graph.setdefault(_unit(a), set()).add(_unit(b))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert not circles, circles


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    """An upward import hidden in a function body (a search module loading the API lazily) is caught, and the
    same import the other way round is not."""
    pkg = tmp_path / "v2t_jax"
    (pkg / "search").mkdir(parents=True)
    (pkg / "api.py").write_text("from v2t_jax.search import core\n")
    (pkg / "search" / "core.py").write_text("def run():\n    from v2t_jax import api\n\n    return api\n")
    arrows = _arrows(pkg)
    assert set(arrows) == {("v2t_jax.api", "v2t_jax.search.core"), ("v2t_jax.search.core", "v2t_jax.api")}
    assert _upward(arrows) == ["v2t_jax.search.core (line 2) imports v2t_jax.api"]
