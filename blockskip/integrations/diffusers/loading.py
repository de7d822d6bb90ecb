"""Skip blocks in the transformer the script loads, right after loading and before it moves to the GPU.

The scripts load their transformer with `XTransformer2DModel.from_pretrained(path,
subfolder="transformer", ...)`, then call `requires_grad_(False)`, `.to(device, dtype)`, optional
gradient checkpointing and `add_adapter(LoraConfig(...))`. The adapter wraps `from_pretrained` on
the transformer classes of `FAMILIES` for the duration of the run: a call with
`subfolder="transformer"` returns the model with `apply_block_skip` already applied, so

- the skipped blocks' weights stay on the CPU when the script moves the model to the GPU;
- the script's own `add_adapter` finds no Linear layer in the parameter-free stand-ins and puts
  LoRA only on kept blocks, under their original indices;
- the model keeps its class, so the scripts' `isinstance(model, type(unwrap_model(transformer)))`
  save hooks still recognise it.

Pipelines the scripts build for class images, validation and the final LoRA check load their
transformer through the pipeline loader (a path, no `subfolder`): those stay full models.

Before skipping, the model is cast to the script's mixed-precision dtype, which the script would
do a few lines later anyway; the skipped blocks then wait on the CPU in that dtype (half the RAM
and transfer of fp32).
"""

from __future__ import annotations

import functools
import inspect
import sys
from typing import Any

from torch import nn

from ...skipping.skip import apply_block_skip
from ..patching import Patches
from .checks import check_lora_layers
from .families import FAMILIES, family_for_class
from .ralu_validation import sample_with_ralu
from .session import ScriptSession
from .validation import guard_intermediate_validation


def install_loading_hook(patches: Patches, session: ScriptSession) -> None:
    """Wrap `from_pretrained` of every supported transformer class (undone with `patches`)."""
    for family in FAMILIES:
        model_class = family.transformer_type()
        descriptor = inspect.getattr_static(model_class, "from_pretrained")
        patches.set(model_class, "from_pretrained", classmethod(_loader(descriptor, session)))


def _loader(descriptor: Any, session: ScriptSession):
    @functools.wraps(descriptor.__func__)
    def from_pretrained(cls, *args, **kwargs):
        model = descriptor.__get__(None, cls)(*args, **kwargs)
        if kwargs.get("subfolder") == "transformer":
            caller = sys._getframe(1)
            try:
                _skip_blocks(model, session, caller.f_globals)
            finally:
                del caller
        return model

    return from_pretrained


def _skip_blocks(model: nn.Module, session: ScriptSession, script_globals: dict) -> None:
    dtype = session.weight_dtype()
    if dtype is not None:
        model.to(dtype)
    handle = apply_block_skip(model, session.plan)
    check_lora_layers(getattr(session.args, "lora_layers", None), handle.skipped_block_names())
    if session.plan.kept_blocks.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    session.handles.append(handle)
    session.family = family_for_class(type(model).__name__)
    session.log(handle.summary())
    guard_intermediate_validation(script_globals, model, handle, session)
    if session.ralu is not None:
        sample_with_ralu(script_globals, session.ralu, session.family.pipeline_class, session.log)
