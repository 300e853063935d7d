"""The layer order of refactor_documentation/ARCHITECTURE.md, checked on the source: a module may
import from its own layer or the layers below it, never above (lazy imports inside functions
count too). And config, the bottom layer, imports nothing else of the package but errors and readers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlm_recipes"
LAYERS = [
    {"config", "errors", "readers"},
    {"families", "boxes"},
    {"data"},
    {"models"},
    {"evaluation"},
    {"objectives"},
    {"training"},
    {"api", "benchmark"},
    {"cli", "__init__", "__main__"},
]


def layer_of(module: str) -> int:
    """'vlm_recipes.data.chat' -> the index of the layer holding 'data'."""
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def imported_modules(path: Path, modules: set[str] = frozenset()) -> set[str]:
    """Every vlm_recipes module `path` imports, relative imports resolved. With the package's
    `modules`: `from pkg import sub` is an import of pkg.sub, not of pkg (its __init__)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("vlm_recipes"):
                subs = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
                found.update(subs or {target})
                found.update(f"{target}.{alias.name}" for alias in node.names if target == "vlm_recipes")
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("vlm_recipes"))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[module_name(p) for p in SOURCES])
def test_no_module_imports_from_a_layer_above_it(path):
    mine = layer_of(module_name(path))
    above = sorted(m for m in imported_modules(path) if m != "vlm_recipes" and layer_of(m) > mine)
    assert not above, f"{module_name(path)} (layer {mine}) imports {above} from a layer above"


def test_config_imports_nothing_else_of_the_package():
    """Only its own modules, errors and readers (the modules below it)."""
    code = ("import sys, vlm_recipes.config; "
            "print(sorted(m for m in sys.modules if m.startswith('vlm_recipes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["vlm_recipes", "vlm_recipes.config", "vlm_recipes.config.loading",
                               "vlm_recipes.config.options", "vlm_recipes.config.recipes",
                               "vlm_recipes.config.schema", "vlm_recipes.errors",
                               "vlm_recipes.readers"])


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path):
    """The checker itself: a relative import two levels up inside a function is found."""
    probe = PACKAGE / "data" / "chat.py"
    assert "vlm_recipes.boxes" in imported_modules(probe)
    assert layer_of("vlm_recipes.cli.train") > layer_of("vlm_recipes.training.run") > layer_of("vlm_recipes.config")


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (top-level and lazy). `from pkg import name` counts
    as an import of the module pkg.name when there is one, else of pkg (its __init__)."""
    modules = {module_name(p) for p in SOURCES}
    return {module_name(path): {m for m in imported_modules(path, modules) if m in modules} for path in SOURCES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycles():
    """No module imports one that (through others) imports it back, lazy imports included."""
    graph = import_graph()
    assert graph["vlm_recipes.data.splits"] >= {"vlm_recipes.data.sources", "vlm_recipes.data.motion"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
