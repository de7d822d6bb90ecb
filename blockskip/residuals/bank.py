"""The residual bank: a folder of safetensors shards and a manifest that says what they hold.

    bank/
      manifest.json            format, model fingerprint, spans, schedule hash, dtype, shards
      shard-00000.safetensors  tensors named "<entry key>/<span index>/<role>"
      shard-00001.safetensors  ...

Every write is atomic: a shard is written to a temporary name, flushed, hashed and renamed, and
only then does the manifest (also written by rename) list it. An interrupted precompute leaves a
valid, incomplete bank; reopening it for writing drops stray temporary files and continues after
the last listed shard, so the finished bank is byte-for-byte the one an uninterrupted run writes.
Reading checks every shard's size up front and its sha256 the first time it is used.

Example:
    >>> import tempfile, torch
    >>> scratch = tempfile.TemporaryDirectory()
    >>> folder = scratch.name
    >>> writer = BankWriter(folder, {"model": {"class": "Demo"}, "spans": [], "schedule": None, "dtype": "float32"})
    >>> writer.add("step0-0", {"0/image": torch.ones(2, 3)})
    >>> writer.finish()
    >>> BankReader(folder).load(["step0-0"])["0/image"].shape
    torch.Size([1, 2, 3])
    >>> scratch.cleanup()
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from .fingerprint import canonical_hash

BANK_FORMAT = "blockskip.bank"
BANK_VERSION = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_BYTES = 256 * 2**20
HEADER_FIELDS = ("model", "spans", "schedule", "dtype")


class BankError(RuntimeError):
    """A residual bank is missing, damaged, incomplete, or was made for something else."""


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _manifest_bytes(manifest: dict) -> bytes:
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return (json.dumps({**body, "checksum": canonical_hash(body)}, indent=1, sort_keys=True) + "\n").encode()


def write_manifest(folder: str | os.PathLike, manifest: dict) -> None:
    """Write a manifest atomically, with the checksum that makes later edits detectable."""
    _atomic_write(Path(folder) / MANIFEST, _manifest_bytes(manifest))


def read_manifest(folder: str | os.PathLike) -> dict:
    """Parse and self-check a bank's manifest."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BankError(f"{folder} is not a residual bank: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BankError(f"{path} is not valid JSON ({error}); the bank is damaged") from error
    if not isinstance(manifest, dict) or manifest.get("format") != BANK_FORMAT:
        raise BankError(f"{path} is not a blockskip residual bank manifest")
    if manifest.get("version") != BANK_VERSION:
        raise BankError(f"{path} has bank version {manifest.get('version')}; this blockskip reads {BANK_VERSION}")
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    if manifest.get("checksum") != canonical_hash(body):
        raise BankError(f"{path} was modified after blockskip wrote it (its checksum does not match)")
    return manifest


class BankWriter:
    """Appends entries to a bank in shards; resumes an incomplete bank with the same header.

    `header` holds the fields that define what the bank is for: model fingerprint, spans,
    schedule hash and storage dtype. Reopening a folder whose manifest has another header is
    refused, so one folder never mixes residuals of two setups.
    """

    def __init__(self, folder: str | os.PathLike, header: dict[str, Any], shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.folder = Path(folder)
        self.shard_bytes = shard_bytes
        self.folder.mkdir(parents=True, exist_ok=True)
        for stray in self.folder.glob("*.tmp"):
            stray.unlink()
        header = {field: header.get(field) for field in HEADER_FIELDS}
        if (self.folder / MANIFEST).exists():
            self.manifest = read_manifest(self.folder)
            for field in HEADER_FIELDS:
                if self.manifest.get(field) != header[field]:
                    raise BankError(
                        f"{self.folder} already holds a bank with another {field} "
                        f"({json.dumps(self.manifest.get(field))[:120]} vs {json.dumps(header[field])[:120]}); "
                        "use a new folder"
                    )
            if self.manifest["complete"]:
                raise BankError(f"{self.folder} already holds a complete bank")
            self._drop_unlisted_shards()
        else:
            self.manifest = {"format": BANK_FORMAT, "version": BANK_VERSION, **header, "complete": False, "shards": []}
            self._write_manifest()
        self.done = {key for shard in self.manifest["shards"] for key in shard["keys"]}
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_keys: list[str] = []
        self._buffer_bytes = 0
        self.bytes_written = sum(shard["bytes"] for shard in self.manifest["shards"])

    def _drop_unlisted_shards(self) -> None:
        listed = {shard["file"] for shard in self.manifest["shards"]}
        for path in self.folder.glob("shard-*.safetensors"):
            if path.name not in listed:
                path.unlink()

    def _write_manifest(self) -> None:
        write_manifest(self.folder, self.manifest)

    def add(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Queue one entry (`name -> tensor`, names like "0/image"); writes a shard when full."""
        if key in self.done or key in self._buffer_keys:
            raise BankError(f"entry {key!r} is already in the bank at {self.folder}")
        if "/" in key:
            raise BankError(f"entry key {key!r} may not contain '/'")
        for name, tensor in tensors.items():
            tensor = tensor.detach().to("cpu").contiguous()
            self._buffer[f"{key}/{name}"] = tensor
            self._buffer_bytes += tensor.numel() * tensor.element_size()
        self._buffer_keys.append(key)
        if self._buffer_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the queued entries as one shard, then list it in the manifest."""
        if not self._buffer_keys:
            return
        name = f"shard-{len(self.manifest['shards']):05d}.safetensors"
        data = save_bytes(self._buffer)
        _atomic_write(self.folder / name, data)
        self.manifest["shards"].append(
            {"file": name, "keys": self._buffer_keys, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        self._write_manifest()
        self.done.update(self._buffer_keys)
        self.bytes_written += len(data)
        self._buffer, self._buffer_keys, self._buffer_bytes = {}, [], 0

    def finish(self) -> None:
        """Write what is queued and mark the bank complete."""
        self.flush()
        self.manifest["complete"] = True
        self.manifest["entries"] = len(self.done)
        self._write_manifest()


class BankReader:
    """Reads entries from a complete bank, memory-mapped, checking shard integrity."""

    def __init__(self, folder: str | os.PathLike, verify_checksums: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest.get("complete"):
            raise BankError(
                f"{self.folder} is an incomplete bank ({sum(len(s['keys']) for s in self.manifest['shards'])} "
                "entries written); run the precompute again to finish it"
            )
        self.verify_checksums = verify_checksums
        self._shard_of: dict[str, dict] = {}
        for shard in self.manifest["shards"]:
            path = self.folder / shard["file"]
            if not path.is_file():
                raise BankError(f"{path} is missing from the bank")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise BankError(f"{path} has {size} bytes, the manifest says {shard['bytes']}: truncated or replaced")
            for key in shard["keys"]:
                self._shard_of[key] = shard
        self._verified: set[str] = set()
        self._open: dict[str, Any] = {}
        self._names: dict[str, list[str]] = {}  # entry key -> tensor names, filled as shards open

    @property
    def keys(self) -> list[str]:
        return list(self._shard_of)

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def _handle(self, shard: dict):
        name = shard["file"]
        if name not in self._open:
            path = self.folder / name
            if self.verify_checksums and name not in self._verified:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest != shard["sha256"]:
                    raise BankError(f"{path} is corrupt: its sha256 does not match the manifest")
                self._verified.add(name)
            try:
                handle = safe_open(str(path), framework="pt")
            except SafetensorError as error:
                raise BankError(f"{path} cannot be read: {error}") from error
            for tensor_name in handle.keys():
                key, name_in_entry = tensor_name.split("/", 1)
                self._names.setdefault(key, []).append(name_in_entry)
            self._open[name] = handle
        return self._open[name]

    def entry(self, key: str) -> dict[str, torch.Tensor]:
        """One entry's tensors, `name -> tensor`."""
        shard = self._shard_of.get(key)
        if shard is None:
            raise BankError(f"entry {key!r} is not in the bank at {self.folder} ({len(self._shard_of)} entries)")
        handle = self._handle(shard)
        return {name: handle.get_tensor(f"{key}/{name}") for name in self._names[key]}

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Entries for a batch of keys, stacked along a new batch dimension."""
        entries = [self.entry(key) for key in keys]
        if not entries:
            raise BankError("no keys given")
        return {name: torch.stack([entry[name] for entry in entries]) for name in entries[0]}
