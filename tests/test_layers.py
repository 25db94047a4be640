"""The package's folders show its layers (DESIGN.md, "Library first"): primitives and the model at
``fusion_core/`` top level, the training engine in ``fusion_core/engine/``; imports only point
down the layers, and no two modules import each other, directly or round a loop (imports inside
functions and under ``TYPE_CHECKING`` count)."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import fusion_core

ROOT = Path(fusion_core.__file__).parent
ENGINE = ("config", "trainer", "optim", "ema", "loader", "checkpoint", "sharded", "distributed", "runfolder",
          "metrics", "data", "stats", "recipe", "cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``fusion_core`` module ``path`` imports, anywhere in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("fusion_core")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("fusion_core"):
                continue
            for a in node.names:  # `from . import x` may name a module
                sub = f"{mod}.{a.name}"
                out.add(sub if (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                        or (ROOT.parent / Path(*sub.split("."))).is_dir() else mod)
    return out


def _graph() -> dict[str, set[str]]:
    """Module → modules it imports, for the real modules (shims of moved paths and package
    ``__init__`` files, which only re-export, are left out)."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        if path.name == "__init__.py" or "alias(__name__" in path.read_text() or path.parent.name == "docs":
            continue
        mods[_module_name(path)] = path
    graph = {}
    for name, path in mods.items():
        deps = set()
        for dep in _imports(path):
            while dep and dep not in mods:  # a package import stands for its __init__'s names
                dep = dep.rpartition(".")[0] if dep.count(".") > 1 else ""
            if dep and dep != name:
                deps.add(dep)
        graph[name] = deps
    return graph


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "active"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "active":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_only_the_engine_imports_the_engine():
    graph = _graph()
    up = {m: sorted(d for d in deps if d.startswith("fusion_core.engine"))
          for m, deps in graph.items() if not m.startswith("fusion_core.engine")}
    assert not {m: d for m, d in up.items() if d}, f"below the engine, modules import it: {up}"


def test_no_engine_module_at_the_top_level():
    top = {p.stem for p in ROOT.glob("*.py")}
    for name in ENGINE:
        if name in top:
            assert "alias(__name__" in (ROOT / f"{name}.py").read_text(), f"fusion_core/{name}.py is not a shim"


@pytest.mark.parametrize("name", ENGINE)
def test_old_module_paths_are_the_new_modules(name):
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        old = importlib.import_module(f"fusion_core.{name}")
    new = importlib.import_module(f"fusion_core.engine.{name}")
    assert old is new
    public = [k for k in dir(new) if not k.startswith("__")]
    assert public and all(getattr(old, k) is getattr(new, k) for k in public)


def test_public_names_stay_importable_from_the_package():
    from fusion_core import Recipe, Trainer, TrainArgs, get_recipe, seed_everything
    from fusion_core.engine import recipe, trainer

    assert Trainer is trainer.Trainer and TrainArgs is trainer.TrainArgs and Recipe is recipe.Recipe
    assert get_recipe is recipe.get_recipe and seed_everything is trainer.seed_everything
    for name in fusion_core.__all__:
        assert getattr(fusion_core, name) is not None
