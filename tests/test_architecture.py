"""The layer order of refactor_documentation/ARCHITECTURE.md, checked on the source: a module may
import from its own layer or the layers below it, never above (lazy imports inside functions
count too). And config, the bottom layer, imports nothing else of the package but errors."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vlm_recipes"
LAYERS = [
    {"config", "errors"},
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


def imported_modules(path: Path) -> set[str]:
    """Every vlm_recipes module `path` imports, relative imports resolved."""
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
                found.add(target)
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
    """Only its own modules and errors (the one module below it)."""
    code = ("import sys, vlm_recipes.config; "
            "print(sorted(m for m in sys.modules if m.startswith('vlm_recipes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["vlm_recipes", "vlm_recipes.config", "vlm_recipes.config.loading",
                               "vlm_recipes.config.options", "vlm_recipes.config.recipes",
                               "vlm_recipes.config.schema", "vlm_recipes.errors"])


def test_the_layer_check_sees_relative_and_lazy_imports(tmp_path):
    """The checker itself: a relative import two levels up inside a function is found."""
    probe = PACKAGE / "data" / "chat.py"
    assert "vlm_recipes.boxes" in imported_modules(probe)
    assert layer_of("vlm_recipes.cli.train") > layer_of("vlm_recipes.training.run") > layer_of("vlm_recipes.config")
