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

The wrapper lives in the script's own globals (its module dies with the run); the switch itself
is `blockskip.integrations.full_model`.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import apply_block_skip
    >>> from blockskip.integrations.diffusers.session import ScriptSession
    >>> model = FluxTransformer2DModel(num_layers=1, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, {"skip": {"leading": 1}, "residuals": {"mode": "none"}})
    >>> def log_validation(pipeline, is_final_validation=False):
    ...     return model.transformer_blocks[0].slot.mode
    >>> script_globals = {"log_validation": log_validation}
    >>> guard_intermediate_validation(script_globals, model, handle, ScriptSession(handle.plan, verbose=False))
    >>> script_globals["log_validation"](None), script_globals["log_validation"](None, is_final_validation=True)
    ('online', 'none')
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

from torch import nn

from ...skipping.skip import BlockSkipHandle
from ..full_model import full_model
from .session import ScriptSession

_WRAPPED = "_blockskip_validation_guard"


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
