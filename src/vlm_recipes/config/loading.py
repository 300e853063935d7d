"""Strict loading: YAML files, `--set key=value` overrides, and plain data into frozen dataclasses.
An unknown key, a wrong type or a bad value is an InputError naming the key's dotted path
(`stages.0.lora.r`). Generic: it knows no recipe field (the schema and recipes.py use it).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import InputError
from ..readers import read_text


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (PyYAML keeps the
    last one without a word, so a recipe would silently lose the first value)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise InputError(f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                                 f"{key_node.start_mark.line + 1}): keep one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path) -> dict:
    """A YAML file (UTF-8, no key twice) whose top level is a mapping (a recipe, a run's config.yaml)."""
    text = read_text(path, "save it as UTF-8 YAML")
    try:
        raw = yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as err:
        raise InputError(f"recipe file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    except InputError as err:
        raise InputError(f"recipe file {path}: {err}") from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else f"a {type(raw).__name__}"
        raise InputError(f"recipe file {path}: the top level must be a mapping of recipe keys (name, stages, ...), "
                         f"got {got}")
    return raw


def apply_override(raw: dict, item: str, per_stage: set[str]) -> None:
    """`a.b.c=value` sets raw[a][b][c]; a key whose first part is in `per_stage` (a stage's field
    without `stages.N.`) applies to every stage."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise InputError(f"--set {item!r}: expected key=value, e.g. --set train.learning_rate=1e-4")
    value = yaml.safe_load(text) if text else ""
    parts = key.strip().split(".")
    if parts[0] in per_stage:
        for stage in raw.setdefault("stages", [{}]):
            _set_path(stage, parts, value, key)
    else:
        _set_path(raw, parts, value, key)


def _set_path(node: Any, parts: list[str], value: Any, key: str) -> None:
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise InputError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a valid index")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if node is None:
                node = {}
    if isinstance(node, list):
        raise InputError(f"--set {key}: cannot replace a list item; set one of its fields")
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from plain data, strictly, naming the key on any error."""
    data = mapping(data, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown key {join(where, unknown[0])!r}: valid keys here are {', '.join(sorted(names))}")
    kwargs = {k: convert(hints[k], v, join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"{where or 'recipe'}: {err}") from None


def mapping(data: Any, where: str) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{where or 'recipe'}: expected a mapping, got {data!r}")
    return data


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp.from_raw(value, where) if hasattr(tp, "from_raw") else from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return convert(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise InputError(f"{where}={value!r}: must be one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: expected a list, got {value!r}")
        return tuple(convert(args[0], v, f"{where}.{i}") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "2e-4" (no dot) as a string
        except ValueError:
            pass
    if tp in (int, float, str, bool, dict) and not (isinstance(value, tp) and
                                                    not (tp is int and isinstance(value, bool))):
        raise InputError(f"{where}={value!r}: expected {tp.__name__}")
    return value


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)