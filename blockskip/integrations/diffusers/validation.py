"""Intermediate validation runs on the full model, or not at all.

The scripts validate during training by wrapping the *training* transformer in a pipeline and
calling their module-level `log_validation(...)`; the final validation loads a fresh, full
pipeline and the saved LoRA, so it never sees blockskip.

- `residuals.mode "online"`: nothing to do. Under `torch.no_grad()` every stand-in runs its
  original block on the stream it receives, so the skipped model with LoRA computes exactly what
  the full model with that LoRA computes (only slower, as the skipped weights are streamed in).
- `residuals.mode "none"` (naive skipping): the training transformer is not the model being
  trained for. The script's `log_validation` is wrapped so that intermediate calls switch the
  stand-ins to online residuals for the duration of the call; with `offload "drop"` the original
  blocks are gone and intermediate validation is switched off with a warning.

The wrapper lives in the script's own globals (its module dies with the run).

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

import functools
import inspect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ...skip import BlockSkipHandle, iter_stand_ins
from .session import ScriptSession

_WRAPPED = "_blockskip_validation_guard"


@contextmanager
def full_model(model: nn.Module) -> Iterator[None]:
    """Make every stand-in of `model` compute its original block (online residuals) inside the block."""
    stand_ins = list(iter_stand_ins(model))
    if any(block.slot.original is None for block in stand_ins):
        raise RuntimeError('the skipped blocks were dropped (offload "drop"); the full model cannot be rebuilt')
    modes = [block.slot.mode for block in stand_ins]
    try:
        for block in stand_ins:
            block.slot.mode = "online"
        yield
    finally:
        for block, mode in zip(stand_ins, modes):
            block.slot.mode = mode


def guard_intermediate_validation(
    script_globals: dict, model: nn.Module, handle: BlockSkipHandle, session: ScriptSession
) -> None:
    """Wrap the script's `log_validation` when intermediate validation would not see the full model."""
    if handle.plan.residuals.mode == "online":
        return
    original = script_globals.get("log_validation")
    if not callable(original) or getattr(original, _WRAPPED, False):
        return
    dropped = handle.plan.offload == "drop"
    signature = inspect.signature(original)

    @functools.wraps(original)
    def log_validation(*args: Any, **kwargs: Any):
        final = signature.bind(*args, **kwargs).arguments.get("is_final_validation", False)
        if final:
            return original(*args, **kwargs)
        if dropped:
            warnings.warn(
                'blockskip: intermediate validation is switched off: with residuals "none" and offload "drop" the '
                "training transformer is not the model being trained for, and its skipped blocks are gone. "
                "The final validation (full pipeline + saved LoRA) still runs.",
                stacklevel=2,
            )
            return []
        session.log('intermediate validation: switching the stand-ins to online residuals (full model) for this call')
        with full_model(model):
            return original(*args, **kwargs)

    setattr(log_validation, _WRAPPED, True)
    script_globals["log_validation"] = log_validation
