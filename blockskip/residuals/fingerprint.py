"""Fingerprints that tie a residual bank to the model, the skip spans and the schedule it came from.

A bank is only valid for the exact weights it was computed from, so the weights hash covers every
byte of every frozen tensor (LoRA weights excluded): its name, dtype, shape and raw bytes, read
through a `uint8` view so bf16 and fp8 hash like any other dtype. Tensors are read in 64 MiB
chunks (a GPU tensor is copied to the CPU one chunk at a time) and hashed on a few threads, as
sha256 releases the GIL; at about 1.8 GB/s per core (SHA-NI), FLUX.1-dev's 23.8 GB take seconds.
Because the bytes are hashed, a bank is also tied to the weights' dtype: a bank computed with fp32
weights is refused for the same checkpoint loaded in bf16.

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import torch
from torch import nn

CHUNK_BYTES = 64 * 2**20


def canonical_hash(value: Any) -> str:
    """sha256 of a JSON-serialisable value, with sorted keys."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes to a hashlib object, a chunk at a time."""
    tensor = tensor.detach()
    digest.update(json.dumps([str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]).encode())
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return
    raw = tensor.reshape(-1).view(torch.uint8)  # copies only a non-contiguous tensor
    for start in range(0, raw.numel(), CHUNK_BYTES):
        digest.update(raw[start : start + CHUNK_BYTES].cpu().numpy())


def tensor_hash(tensor: torch.Tensor) -> str:
    """sha256 of one tensor's dtype, shape and bytes."""
    digest = hashlib.sha256()
    update_with_tensor(digest, tensor)
    return digest.hexdigest()


def weights_hash(named_tensors: Iterable[tuple[str, torch.Tensor]], threads: int | None = None) -> str:
    """sha256 over the names and whole-tensor hashes of `named_tensors`, in the order given."""
    named = list(named_tensors)
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blockskip-hash") as pool:
        hashes = list(pool.map(tensor_hash, (tensor for _, tensor in named)))
    digest = hashlib.sha256()
    for (name, _), value in zip(named, hashes):
        digest.update(f"{name}\n{value}\n".encode())
    return digest.hexdigest()


def _config_of(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def model_fingerprint(model: nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> dict:
    """Class, config hash and whole-weights hash of a model (LoRA weights excluded)."""
    if named_tensors is None:
        named_tensors = model.state_dict().items()
    frozen = sorted(((name, tensor) for name, tensor in named_tensors if "lora_" not in name), key=lambda item: item[0])
    return {
        "class": type(model).__name__,
        "config": canonical_hash(_config_of(model)),
        "weights": weights_hash(frozen),
    }
