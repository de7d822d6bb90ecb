"""The bank manifest: strict parsing, a full schema check, its checksum, and shard-name containment.

A manifest is JSON written by blockskip only. Reading one refuses anything blockskip would not
have written, naming the field: bytes that are not UTF-8, text that is not JSON, duplicate keys,
nesting too deep to parse, unknown or missing fields, wrong types, shard names that could leave
the bank folder. Every check raises `BankError`; no other exception escapes `read_manifest`.

The checksum catches accidental damage (a half-copied file, an edit by hand, a disk error). It is
not a signature: anyone who can write the folder can also rewrite the checksum.

Example:
    >>> [SHARD_NAME.fullmatch(name) is not None for name in ("part-00001/shard-00000.safetensors", "../x/shard-00000.safetensors")]
    [True, False]
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .fingerprint import canonical_hash

BANK_FORMAT = "blockskip.bank"
BANK_VERSION = 2  # 2: every entry records the hash of its inputs
MANIFEST = "manifest.json"
HEADER_FIELDS = ("model", "spans", "schedule", "dtype")
SHARD_NAME = re.compile(r"(part-[0-9]{5,}/)?shard-[0-9]{5,}\.safetensors")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RERUN = "run the precompute again into a new folder"


class BankError(RuntimeError):
    """A residual bank is missing, damaged, incomplete, or was made for something else."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a flushed temporary file and one rename: all or nothing."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as blockskip writes it: sorted keys and a checksum of everything else."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return (json.dumps({**body, "checksum": canonical_hash(body)}, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    """Write a manifest atomically, with the checksum that makes later edits detectable."""
    atomic_write(Path(folder) / MANIFEST, manifest_bytes(manifest))


def read_manifest(folder: str | os.PathLike) -> dict:
    """Parse, schema-check and self-check a bank's manifest; `BankError` names what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BankError(f"{folder} is not a residual bank: it has no {MANIFEST}")
    contained(folder, MANIFEST)
    manifest = _parse(path)
    if not isinstance(manifest, dict) or manifest.get("format") != BANK_FORMAT:
        raise BankError(f"{path} is not a blockskip residual bank manifest")
    version = manifest.get("version")
    if version != BANK_VERSION:
        older = isinstance(version, int) and not isinstance(version, bool) and version < BANK_VERSION
        why = "it was made by an older blockskip, before banks recorded their inputs; " if older else ""
        raise BankError(f"{path} has bank version {version!r}; this blockskip reads {BANK_VERSION}: {why}{_RERUN}")
    validate_manifest(manifest, where=str(path))
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    if manifest["checksum"] != canonical_hash(body):
        raise BankError(f"{path} was modified after blockskip wrote it (its checksum does not match)")
    return manifest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse(path: Path) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except UnicodeDecodeError as error:
        raise BankError(f"{path} is not UTF-8 text ({error}); the bank is damaged") from error
    except RecursionError as error:
        raise BankError(f"{path} is nested too deeply to be a bank manifest; the bank is damaged") from error
    except ValueError as error:  # json.JSONDecodeError is one
        raise BankError(f"{path} is not valid JSON ({error}); the bank is damaged") from error


def contained(folder: str | os.PathLike, name: str) -> Path:
    """`folder / name` resolved, refused unless it stays inside `folder` (symlinks followed)."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path == root:
        raise BankError(f"{name!r} in the bank at {folder} leads outside the bank folder (to {path}); refusing to read it")
    return path


# ----------------------------------------------------------------------------- schema


def _fail(where: str, field: str, problem: str) -> BankError:
    return BankError(f"{where}: {field} {problem}; the manifest is damaged or not blockskip's: {_RERUN}")


def _check(value: Any, kind: type | tuple[type, ...], where: str, field: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # bool is an int subclass; JSON keeps them apart
        raise _fail(where, field, f"should be {' or '.join(k.__name__ for k in kinds)}, not bool")
    if not isinstance(value, kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise _fail(where, field, f"should be {names}, not {type(value).__name__}")
    return value


def _fields(value: Any, where: str, field: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    _check(value, dict, where, field)
    for name in required:
        if name not in value:
            raise _fail(where, field, f"lacks {name!r}")
    for name in value:
        if name not in required and name not in optional:
            raise _fail(where, field, f"has an unknown field {name!r}")
    return value


def _text(value: Any, where: str, field: str, pattern: re.Pattern | None = None, choices: tuple = ()) -> str:
    _check(value, str, where, field)
    if pattern is not None and not pattern.fullmatch(value):
        raise _fail(where, field, f"is {value[:80]!r}, not of the form {pattern.pattern}")
    if choices and value not in choices:
        raise _fail(where, field, f"is {value[:80]!r}, not one of {', '.join(choices)}")
    return value


def _count(value: Any, where: str, field: str, minimum: int = 0) -> int:
    _check(value, int, where, field)
    if value < minimum:
        raise _fail(where, field, f"is {value}, below {minimum}")
    return value


def _names(value: Any, where: str, field: str, empty: bool = False) -> list[str]:
    _check(value, list, where, field)
    if not value and not empty:
        raise _fail(where, field, "is empty")
    for index, name in enumerate(value):
        _text(name, where, f"{field}[{index}]")
        if not name or "/" in name:
            raise _fail(where, f"{field}[{index}]", f"is {name[:80]!r}: empty or with a '/'")
    if len(set(value)) != len(value):
        raise _fail(where, field, "repeats a name")
    return value


def validate_manifest(manifest: Any, where: str = "manifest") -> None:
    """Refuse a manifest whose structure is not exactly the one blockskip writes."""
    top = ("format", "version", "model", "spans", "schedule", "dtype", "complete", "shards", "shared_inputs", "checksum")
    _fields(manifest, where, "the manifest", top, optional=("entries",))
    _text(manifest["format"], where, "format", choices=(BANK_FORMAT,))
    _check(manifest["version"], int, where, "version")
    model = _fields(manifest["model"], where, "model", ("class", "config", "weights"))
    for name in model:
        _text(model[name], where, f"model.{name}")
    _check(manifest["spans"], list, where, "spans")
    for index, span in enumerate(manifest["spans"]):
        _validate_span(span, where, f"spans[{index}]")
    _check(manifest["schedule"], (str, type(None)), where, "schedule")
    dtype = _text(manifest["dtype"], where, "dtype")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise _fail(where, "dtype", f"is {dtype[:40]!r}, not a torch dtype")
    _check(manifest["complete"], bool, where, "complete")
    _text(manifest["checksum"], where, "checksum", pattern=_HEX64)
    shards = _check(manifest["shards"], list, where, "shards")
    files, keys = set(), set()
    for index, shard in enumerate(shards):
        field = f"shards[{index}]"
        _validate_shard(shard, where, field)
        if shard["file"] in files:
            raise _fail(where, f"{field}.file", f"repeats {shard['file']!r}")
        if keys.intersection(shard["keys"]):
            raise _fail(where, f"{field}.keys", f"repeats entry {sorted(keys.intersection(shard['keys']))[0]!r}")
        files.add(shard["file"])
        keys.update(shard["keys"])
    shared = manifest["shared_inputs"]
    if shared is not None or shards:
        _check(shared, list, where, "shared_inputs")
        _names(shared, where, "shared_inputs", empty=True)
        if shared != sorted(shared):
            raise _fail(where, "shared_inputs", "is not sorted")
    if manifest["complete"] != ("entries" in manifest):
        raise _fail(where, "entries", "is there without complete" if "entries" in manifest else "is missing")
    if "entries" in manifest and _count(manifest["entries"], where, "entries") != len(keys):
        raise _fail(where, "entries", f"is {manifest['entries']}, but the shards list {len(keys)}")


def _validate_span(span: Any, where: str, field: str) -> None:
    _fields(span, where, field, ("list", "start", "stop", "position", "stores", "roles"))
    _text(span["list"], where, f"{field}.list")
    start = _count(span["start"], where, f"{field}.start")
    _count(span["stop"], where, f"{field}.stop", minimum=start + 1)
    position = _text(span["position"], where, f"{field}.position", choices=("leading", "trailing"))
    stores = "output" if position == "leading" else "delta"
    _text(span["stores"], where, f"{field}.stores", choices=(stores,))
    _names(span["roles"], where, f"{field}.roles")


def _validate_shard(shard: Any, where: str, field: str) -> None:
    _fields(shard, where, field, ("file", "keys", "bytes", "sha256", "inputs"))
    _text(shard["file"], where, f"{field}.file", pattern=SHARD_NAME)
    keys = _names(shard["keys"], where, f"{field}.keys")
    _count(shard["bytes"], where, f"{field}.bytes", minimum=1)
    _text(shard["sha256"], where, f"{field}.sha256", pattern=_HEX64)
    inputs = _check(shard["inputs"], list, where, f"{field}.inputs")
    if len(inputs) != len(keys):
        raise _fail(where, f"{field}.inputs", f"has {len(inputs)} hashes for {len(keys)} keys")
    for index, digest in enumerate(inputs):
        _text(digest, where, f"{field}.inputs[{index}]", pattern=_HEX64)
