"""One reader per kind of file a command reads (JSON, UTF-8 text, safetensors headers), each turning
any corruption into an InputError: one line naming the file, what is wrong with it and what to do.
A missing file is the caller's case (`default`), a present but unreadable one never is: an empty,
binary, truncated or mistyped file is not silently taken for an absent one.

Layer 0 with errors.py: it imports nothing else of the package, so every layer can read through it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import InputError

MISSING = object()
"""`default` for a file that must exist."""

JSON_TYPES = {dict: "an object {...}", list: "a list [...]", str: "a string", int: "an integer",
              float: "a number", bool: "true or false"}


def read_text(path: Path, fix: str = "", default=MISSING) -> str:
    """The text of `path`, which must be UTF-8 (`default` when it does not exist, if given)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if default is not MISSING:
            return default
        raise InputError(f"{path}: no such file{_then(fix)}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a file{_then(fix)}") from None
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}){_then(fix)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r})"
                         f"{_then(fix or 'save it as UTF-8')}") from None


def read_json(path: Path, kind: type = dict, fix: str = "", default=MISSING, keys: dict | None = None,
              required: dict | None = None):
    """The JSON value in `path`, which must be of `kind` (dict, list, ...); with `keys`, a dict's
    keys that must have a type ({"state": str}; a tuple of types allowed) when present; with
    `required`, keys that must be there, of their type. `default` when the file does not exist,
    if given; any other problem is an InputError."""
    path = Path(path)
    text = read_text(path, fix, default)
    if text is default and not path.exists():
        return default
    if not text.strip():
        raise InputError(f"{path}: empty file (expected {JSON_TYPES.get(kind, kind.__name__)} in JSON){_then(fix)}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
                         f"truncated or corrupt){_then(fix)}") from None
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise InputError(f"{path}: expected {JSON_TYPES.get(kind, kind.__name__)} in JSON, found "
                         f"{_json_type(value)}{_then(fix)}")
    for key in required or {}:
        if key not in value:
            raise InputError(f"{path}: needs a {key} (its keys: {_keys(value)}){_then(fix)}")
    for key, types in {**(keys or {}), **(required or {})}.items():
        if key in value and not isinstance(value[key], types):
            raise InputError(f"{path}: {key!r} is {_json_type(value[key])}, expected "
                             f"{_names(types)}{_then(fix)}")
    return value


def check_safetensors(path: Path, fix: str = "") -> dict:
    """The header of the safetensors file `path` (tensor name -> dtype, shape, offsets), checked
    against the file's size without reading the weights."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            if length is None or length > size - 8:
                raise InputError(f"{path}: not a safetensors file (header cut short; {size} bytes): "
                                 f"truncated or corrupt{_then(fix)}")
            header = f.read(length)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err}){_then(fix)}") from None
    try:
        value = json.loads(header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path}: not a safetensors file (its header is not JSON): corrupt{_then(fix)}") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: not a safetensors file (header is {_json_type(value)}){_then(fix)}")
    tensors = {k: v for k, v in value.items() if k != "__metadata__"}
    bad = next((k for k, v in tensors.items() if not _is_tensor_entry(v)), None)
    if bad is not None:
        raise InputError(f"{path}: header entry {bad!r} is not a tensor (dtype, shape, data_offsets): "
                         f"corrupt{_then(fix)}")
    ends = [v["data_offsets"][1] for v in tensors.values()]
    if ends and max(ends) > size - 8 - length:
        raise InputError(f"{path}: truncated ({size} bytes, its header describes {max(ends) + 8 + length})"
                         f"{_then(fix)}")
    return value


def check_torch_file(path: Path, fix: str = "") -> None:
    """A file written by torch.save (a zip archive: optimizer.pt, scheduler.pt, rng_state.pth,
    training_args.bin), checked whole (CRCs) without unpickling it."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        broken = "its archive"
    if broken is not None:
        raise InputError(f"{path}: not a readable torch file ({broken} is damaged or cut short){_then(fix)}")


def _is_tensor_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in entry["data_offsets"]))


def _keys(value: dict) -> str:
    return ", ".join(map(repr, list(value)[:5])) + (", ..." if len(value) > 5 else "") if value else "no keys"


def _then(fix: str) -> str:
    return f": {fix}" if fix else ""


def _json_type(value) -> str:
    if value is None:
        return "null"
    for kind in (bool, dict, list, str, int, float):
        if isinstance(value, kind):
            return JSON_TYPES[kind]
    return type(value).__name__


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(JSON_TYPES.get(t, "null" if t is type(None) else t.__name__) for t in types)
