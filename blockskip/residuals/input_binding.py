"""Input binding: every bank entry records a hash of the transformer inputs it was computed from.

A residual is right only for the exact input that produced it. The model, plan and schedule
fingerprints cannot see a changed image folder or caption (same count, same sizes), so each entry
also records the sha256 of its sample's tensor arguments, and training hashes what it feeds the
model and compares, entry by entry.

A sample is hashed as blockskip sees it at precompute time: batch-1 forward kwargs. A tensor whose
first dimension is 1 holds the sample's row (its hash drops that dimension); any other tensor is
shared by the batch (FLUX's `img_ids`, `txt_ids`) and hashed whole; the bank records which names
are shared. Arguments are hashed in name order as name, dtype, shape and raw bytes. Non-tensor
arguments (`return_dict`, attention kwargs) are not hashed: they do not change what the frozen
blocks compute. At training time `row_hashes` rebuilds the same per-row view of a batch.

Example:
    >>> import torch
    >>> sample = {"hidden_states": torch.ones(1, 4, 8), "img_ids": torch.zeros(4, 3), "return_dict": False}
    >>> digest, shared = sample_hash(sample)
    >>> shared
    ['img_ids']
    >>> batch = {"hidden_states": torch.cat([torch.zeros(1, 4, 8), torch.ones(1, 4, 8)]), "img_ids": torch.zeros(4, 3)}
    >>> row_hashes(batch, 2, shared)[1] == digest
    True
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

import torch

from .fingerprint import update_with_tensor
from .manifest import BankError


def _view_hash(view: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(view):
        digest.update(f"{name}\n".encode())
        update_with_tensor(digest, view[name])
    return digest.hexdigest()


def _is_row(value: torch.Tensor) -> bool:
    return value.ndim >= 1 and value.shape[0] == 1


def sample_hash(inputs: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The hash of one sample's batch-1 forward kwargs, and the sorted names of its shared tensors."""
    tensors = {name: value for name, value in inputs.items() if torch.is_tensor(value)}
    shared = sorted(name for name, value in tensors.items() if not _is_row(value))
    view = {name: value if name in shared else value[0] for name, value in tensors.items()}
    return _view_hash(view), shared


def row_hashes(arguments: Mapping[str, Any], rows: int, shared: Sequence[str]) -> list[str]:
    """The hash of every row of a batch's forward arguments, as `sample_hash` hashed its sample.

    Every tensor not in `shared` must have `rows` rows, one per bank entry of the step.
    """
    tensors = {name: value for name, value in arguments.items() if torch.is_tensor(value)}
    for name, value in tensors.items():
        if name not in shared and (value.ndim == 0 or value.shape[0] != rows):
            size = "no batch dimension" if value.ndim == 0 else f"{value.shape[0]} rows"
            raise BankError(
                f"input {name!r} has {size}, but the step names {rows} bank entries: wrong keys for this batch, "
                "or a bank made from other inputs"
            )
    return [
        _view_hash({name: value if name in shared else value[row] for name, value in tensors.items()})
        for row in range(rows)
    ]
