"""Function sizes in src/: the longest functions (lines, decorators and docstrings included) and those
with the most parameters (self/cls not counted). `python scripts/function_sizes.py [--top N]`."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "vlm_recipes"


def functions():
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                params = len([n for n in names if n not in ("self", "cls")]) + bool(args.vararg) + bool(args.kwarg)
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                yield f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}", node.end_lineno - start + 1, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--top", type=int, default=5)
    found = list(functions())
    top = parser.parse_args().top
    print(f"{len(found)} functions")
    for title, key in (("longest (lines)", 1), ("most parameters", 2)):
        print(title + ":")
        for name, lines, params in sorted(found, key=lambda f: -f[key])[:top]:
            print(f"  {lines:4d} lines {params:3d} params  {name}")


if __name__ == "__main__":
    main()
