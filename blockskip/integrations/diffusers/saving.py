"""Write `blockskip_plan.json` beside every LoRA the script saves.

The scripts save through their pipeline class: `XPipeline.save_lora_weights(output_dir,
transformer_lora_layers=get_peft_model_state_dict(transformer), ...)`, from the accelerate save
hook (checkpoints) and at the end of training. The LoRA itself needs nothing from blockskip: the
stand-ins keep every kept block at its original index, so the state dict has the full model's key
names and loads into the stock pipeline with `load_lora_weights`. The wrapper around
`save_lora_weights` only adds the plan file, and refuses a state dict with keys in skipped blocks
(which cannot happen unless the model was changed behind blockskip's back).
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

from ..patching import Patches
from .errors import ScriptAdapterError
from .families import FAMILIES
from .session import ScriptSession


def install_saving_hook(patches: Patches, session: ScriptSession) -> None:
    """Wrap `save_lora_weights` of every supported pipeline class (undone with `patches`)."""
    for family in FAMILIES:
        pipeline_class = family.pipeline_type()
        descriptor = inspect.getattr_static(pipeline_class, "save_lora_weights")
        patches.set(pipeline_class, "save_lora_weights", classmethod(_saver(descriptor, session)))


def _saver(descriptor: Any, session: ScriptSession):
    signature = inspect.signature(descriptor.__func__)

    @functools.wraps(descriptor.__func__)
    def save_lora_weights(cls, *args, **kwargs):
        arguments = signature.bind(cls, *args, **kwargs).arguments
        layers = arguments.get("transformer_lora_layers")
        if layers and session.handles:
            _check_keys(layers, session.handles[-1].skipped_block_names())
        result = descriptor.__get__(None, cls)(*args, **kwargs)
        directory = arguments.get("save_directory")
        if layers and session.handles and directory is not None:
            path = session.handles[-1].save_plan(Path(directory))
            session.plan_files.append(path)
            session.log(f"saved the LoRA with its plan: {path}")
        return result

    return save_lora_weights


def _check_keys(layers: dict, skipped: list[str]) -> None:
    prefixes = tuple(f"{name}." for name in skipped) + tuple(f"transformer.{name}." for name in skipped)
    bad = [key for key in layers if key.startswith(prefixes)]
    if bad:
        raise ScriptAdapterError(f"the LoRA to save has weights in skipped blocks ({bad[:3]}); refusing to save it")
