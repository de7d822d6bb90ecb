"""The residual bank: a folder of safetensors shards and a manifest that says what they hold.

    bank/
      manifest.json            format, model fingerprint, spans, schedule hash, dtype, shards
      shard-00000.safetensors  tensors named "<entry key>/<span index>/<role>"
      shard-00001.safetensors  ...

Every write is atomic: a shard is written to a temporary name, flushed, hashed and renamed, and
only then does the manifest (also written by rename) list it, with the hash of each entry's
inputs (`input_binding`). An interrupted precompute leaves a valid, incomplete bank; reopening it
for writing drops stray temporary files and continues after the last listed shard, so the
finished bank is byte-for-byte the one an uninterrupted run writes. Reading checks the manifest's
schema (`manifest`), every shard's size and place up front, and a shard's sha256 and contents the
first time it is used.

Example:
    >>> import tempfile, torch
    >>> scratch = tempfile.TemporaryDirectory()
    >>> span = {"list": "blocks", "start": 0, "stop": 1, "position": "leading", "stores": "output", "roles": ["image"]}
    >>> model = {"class": "Demo", "config": "-", "weights": "-"}
    >>> writer = BankWriter(scratch.name, {"model": model, "spans": [span], "schedule": None, "dtype": "float32"})
    >>> writer.add("step0-0", {"0/image": torch.ones(2, 3)}, inputs={"hidden_states": torch.zeros(1, 2, 3)})
    >>> writer.finish()
    >>> BankReader(scratch.name).load(["step0-0"])["0/image"].shape
    torch.Size([1, 2, 3])
    >>> scratch.cleanup()
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from .input_binding import sample_hash
from .manifest import (
    BANK_FORMAT,
    BANK_VERSION,
    HEADER_FIELDS,
    MANIFEST,
    BankError,
    atomic_write,
    contained,
    read_manifest,
    validate_manifest,
    write_manifest,
)

__all__ = ["BANK_FORMAT", "BANK_VERSION", "DEFAULT_SHARD_BYTES", "HEADER_FIELDS", "MANIFEST", "BankError",
           "BankReader", "BankWriter", "read_manifest", "write_manifest"]

DEFAULT_SHARD_BYTES = 256 * 2**20
_READ_BYTES = 16 * 2**20


class BankWriter:
    """Appends entries to a bank in shards; resumes an incomplete bank with the same header.

    `header` holds the fields that define what the bank is for: model fingerprint, spans,
    schedule hash and storage dtype. Reopening a folder whose manifest has another header is
    refused, so one folder never mixes residuals of two setups; `check_inputs` refuses to resume
    from inputs other than those the written entries were made from.
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
                if self.manifest[field] != json.loads(json.dumps(header[field])):
                    raise BankError(
                        f"{self.folder} already holds a bank with another {field} "
                        f"({json.dumps(self.manifest[field])[:120]} vs {json.dumps(header[field])[:120]}); "
                        "use a new folder"
                    )
            if self.manifest["complete"]:
                raise BankError(f"{self.folder} already holds a complete bank")
            self._drop_unlisted_shards()
        else:
            self.manifest = {"format": BANK_FORMAT, "version": BANK_VERSION, **header, "complete": False,
                             "shards": [], "shared_inputs": None}
            self._write_manifest()
        self.input_hashes = {
            key: digest for shard in self.manifest["shards"] for key, digest in zip(shard["keys"], shard["inputs"])
        }
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_keys: list[str] = []
        self._buffer_inputs: list[str] = []
        self._buffer_bytes = 0
        self.bytes_written = sum(shard["bytes"] for shard in self.manifest["shards"])

    @property
    def done(self) -> set[str]:
        """Keys of the entries already written to listed shards."""
        return set(self.input_hashes)

    def _drop_unlisted_shards(self) -> None:
        listed = {shard["file"] for shard in self.manifest["shards"]}
        for path in self.folder.glob("shard-*.safetensors"):
            if path.name not in listed:
                path.unlink()

    def _write_manifest(self) -> None:
        validate_manifest({**self.manifest, "checksum": "0" * 64}, where=str(self.folder / MANIFEST))
        write_manifest(self.folder, self.manifest)

    def _input_hash(self, key: str, inputs: Mapping[str, Any]) -> str:
        digest, shared = sample_hash(inputs)
        known = self.manifest["shared_inputs"]
        if known is not None and known != shared:
            raise BankError(
                f"entry {key!r} shares inputs {shared} across the batch, but the bank at {self.folder} was made with "
                f"{known} shared: its samples must all come in one form"
            )
        self.manifest["shared_inputs"] = shared
        return digest

    def check_inputs(self, key: str, inputs: Mapping[str, Any]) -> None:
        """Refuse resuming with `inputs` for an entry that was written from other inputs."""
        if self._input_hash(key, inputs) != self.input_hashes[key]:
            raise BankError(
                f"the bank at {self.folder} was started from other inputs: entry {key!r} was computed from another "
                "image, caption or input setting than this run gives it. Resume with the inputs the bank was "
                "started from, or run the precompute into a new folder"
            )

    def add(self, key: str, tensors: dict[str, torch.Tensor], inputs: Mapping[str, Any]) -> None:
        """Queue one entry (`name -> tensor`, names like "0/image") made from `inputs`, the sample's
        batch-1 forward kwargs; writes a shard when full."""
        if key in self.input_hashes or key in self._buffer_keys:
            raise BankError(f"entry {key!r} is already in the bank at {self.folder}")
        if not key or "/" in key:
            raise BankError(f"entry key {key!r} may not be empty or contain '/'")
        self._buffer_inputs.append(self._input_hash(key, inputs))
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
        atomic_write(self.folder / name, data)
        self.manifest["shards"].append({
            "file": name, "keys": self._buffer_keys, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "inputs": self._buffer_inputs,
        })
        self._write_manifest()
        self.input_hashes.update(zip(self._buffer_keys, self._buffer_inputs))
        self.bytes_written += len(data)
        self._buffer, self._buffer_keys, self._buffer_inputs, self._buffer_bytes = {}, [], [], 0

    def finish(self) -> None:
        """Write what is queued and mark the bank complete."""
        self.flush()
        self.manifest["complete"] = True
        self.manifest["entries"] = len(self.input_hashes)
        self._write_manifest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


class BankReader:
    """Reads entries from a complete bank, memory-mapped, checking shard integrity and contents."""

    def __init__(self, folder: str | os.PathLike, verify_checksums: bool = True):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if not self.manifest["complete"]:
            raise BankError(
                f"{self.folder} is an incomplete bank ({sum(len(s['keys']) for s in self.manifest['shards'])} "
                "entries written); run the precompute again to finish it"
            )
        self.verify_checksums = verify_checksums
        self.dtype: torch.dtype = getattr(torch, self.manifest["dtype"])
        self.shared_inputs: list[str] = self.manifest["shared_inputs"] or []
        self._tensor_names = sorted(
            f"{index}/{role}" for index, span in enumerate(self.manifest["spans"]) for role in span["roles"]
        )
        self._shard_of: dict[str, dict] = {}
        self._input_hash: dict[str, str] = {}
        self._paths: dict[str, Path] = {}
        for shard in self.manifest["shards"]:
            path = contained(self.folder, shard["file"])
            if not path.is_file():
                raise BankError(f"{self.folder / shard['file']} is missing from the bank")
            size = path.stat().st_size
            if size != shard["bytes"]:
                raise BankError(f"{path} has {size} bytes, the manifest says {shard['bytes']}: truncated or replaced")
            self._paths[shard["file"]] = path
            for key, digest in zip(shard["keys"], shard["inputs"]):
                self._shard_of[key] = shard
                self._input_hash[key] = digest
        self._open: dict[str, Any] = {}

    @property
    def keys(self) -> list[str]:
        return list(self._shard_of)

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def input_hash(self, key: str) -> str:
        """The hash of the inputs entry `key` was computed from (see `input_binding`)."""
        self._shard(key)
        return self._input_hash[key]

    def _shard(self, key: str) -> dict:
        shard = self._shard_of.get(key)
        if shard is None:
            raise BankError(f"entry {key!r} is not in the bank at {self.folder} ({len(self._shard_of)} entries)")
        return shard

    def _handle(self, shard: dict):
        name = shard["file"]
        if name not in self._open:
            path = self._paths[name]
            if self.verify_checksums and _file_sha256(path) != shard["sha256"]:
                raise BankError(f"{path} is corrupt: its sha256 does not match the manifest")
            try:
                handle = safe_open(str(path), framework="pt")
                held = sorted(handle.keys())
            except SafetensorError as error:
                raise BankError(f"{path} cannot be read: {error}") from error
            listed = sorted(f"{key}/{tensor}" for key in shard["keys"] for tensor in self._tensor_names)
            if held != listed:
                raise BankError(
                    f"{path} does not hold the entries the manifest lists for it ({shard['keys'][:3]}…, tensors "
                    f"{self._tensor_names}): the manifest or the shard was replaced; run the precompute again"
                )
            self._open[name] = handle
        return self._open[name]

    def entry(self, key: str) -> dict[str, torch.Tensor]:
        """One entry's tensors, `name -> tensor`."""
        shard = self._shard(key)
        handle = self._handle(shard)
        try:
            tensors = {name: handle.get_tensor(f"{key}/{name}") for name in self._tensor_names}
        except SafetensorError as error:
            raise BankError(f"entry {key!r} cannot be read from {self._paths[shard['file']]}: {error}") from error
        for name, tensor in tensors.items():
            if tensor.dtype != self.dtype:
                raise BankError(f"entry {key!r} holds {name} in {tensor.dtype}, but the manifest says {self.dtype}")
        return tensors

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """Entries for a batch of keys, stacked along a new batch dimension."""
        keys = list(keys)
        entries = [self.entry(key) for key in keys]
        if not entries:
            raise BankError("no keys given")
        stacked = {}
        for name in self._tensor_names:
            shapes = {tuple(entry[name].shape) for entry in entries}
            if len(shapes) > 1:
                raise BankError(
                    f"bank entries {keys[:4]} hold {name} of different shapes {sorted(shapes)}: they cannot be one "
                    "batch (wrong keys for this batch, or a damaged bank)"
                )
            stacked[name] = torch.stack([entry[name] for entry in entries])
        return stacked
