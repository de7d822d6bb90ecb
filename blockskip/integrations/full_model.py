"""Run a skipped model as the full model for a while: every stand-in computes its original block.

With `residuals.mode "none"` (naive skipping) the training model is not the model being trained
for; validation and sampling switch its stand-ins to online residuals for the duration of the
call. With `offload "drop"` the original blocks are gone, and `full_model` raises `error`.

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import apply_block_skip
    >>> model = FluxTransformer2DModel(num_layers=1, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, {"skip": {"leading": 1}, "residuals": {"mode": "none"}})
    >>> with full_model(model):
    ...     [block.slot.mode for block in model.transformer_blocks]
    ['online']
    >>> [block.slot.mode for block in model.transformer_blocks]
    ['none']
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ..skipping.skip import iter_stand_ins


@contextmanager
def full_model(model: nn.Module, error: type[Exception] = RuntimeError) -> Iterator[None]:
    """Make every stand-in of `model` compute its original block (online residuals) inside the block."""
    stand_ins = list(iter_stand_ins(model))
    if any(block.slot.original is None for block in stand_ins):
        raise error('the skipped blocks were dropped (offload "drop"); the full model cannot be rebuilt')
    modes = [block.slot.mode for block in stand_ins]
    try:
        for block in stand_ins:
            block.slot.mode = "online"
        yield
    finally:
        for block, mode in zip(stand_ins, modes):
            block.slot.mode = mode
