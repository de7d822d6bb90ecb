"""Fingerprints that tie a residual bank to the model, the skip spans and the schedule it came from.

A bank is only valid for the exact weights, spans and training inputs it was computed from. These
hashes are cheap enough to recompute every time a bank is opened.

Example:
    >>> import torch
    >>> a, b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    >>> model_fingerprint(a) == model_fingerprint(a), model_fingerprint(a) == model_fingerprint(b)
    (True, False)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import torch
from torch import nn

_SAMPLED_VALUES = 256  # per tensor: enough to tell two trainings or two checkpoints apart


def canonical_hash(value: Any) -> str:
    """sha256 of a JSON-serialisable value, with sorted keys."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _config_of(model: nn.Module) -> dict:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    return {key: value for key, value in dict(config).items() if not key.startswith("_")}


def _sample(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().reshape(-1)
    stride = max(1, flat.numel() // _SAMPLED_VALUES)
    sample = flat[::stride][:_SAMPLED_VALUES].to("cpu")
    if sample.is_floating_point():
        # Rounded to bf16, so the same checkpoint in fp32, fp16 or bf16 hashes alike.
        sample = sample.to(torch.bfloat16)
    return sample.to(torch.float64).numpy().tobytes()


def weights_hash(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes and an evenly spaced sample of every tensor's values."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        if tensor.numel() and tensor.device.type != "meta":
            digest.update(_sample(tensor))
    return digest.hexdigest()


def model_fingerprint(model: nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]] | None = None) -> dict:
    """Class, config hash and sampled-weights hash of a model (LoRA weights excluded)."""
    if named_tensors is None:
        named_tensors = model.state_dict().items()
    frozen = sorted(((name, tensor) for name, tensor in named_tensors if "lora_" not in name), key=lambda item: item[0])
    return {
        "class": type(model).__name__,
        "config": canonical_hash(_config_of(model)),
        "weights": weights_hash(frozen),
    }
