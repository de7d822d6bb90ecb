"""Write `blockskip_plan.json` beside every LoRA SimpleTuner saves.

SimpleTuner saves LoRA through `ModelFoundation.save_lora_weights(save_directory,
transformer_lora_layers=get_peft_model_state_dict(transformer), ...)` — from its accelerate
save-state hook (checkpoints, and `ema/` beside them with EMA) and at the end of training — which
calls its FLUX pipeline class's `save_lora_weights`. The LoRA needs nothing from blockskip: the
stand-ins keep every kept block at its original index, so the keys are the full model's and load
into the stock diffusers `FluxPipeline` with `load_lora_weights`. The wrapper on the family object
only refuses a state dict with keys in skipped blocks and adds the plan file.

Example:
    >>> check_lora_keys({"transformer.transformer_blocks.1.attn.to_q.lora_A.weight": None}, ["transformer_blocks.0"])
    >>> check_lora_keys({"transformer_blocks.0.attn.to_q.lora_A.weight": None}, ["transformer_blocks.0"])
    Traceback (most recent call last):
    ...
    blockskip.integrations.simpletuner.errors.SimpleTunerAdapterError: the LoRA to save has weights in skipped blocks (['transformer_blocks.0.attn.to_q.lora_A.weight']); refusing to save it
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..patching import Patches
from .errors import SimpleTunerAdapterError
from .session import TrainingSession


def check_lora_keys(layers: Mapping[str, Any], skipped: Iterable[str]) -> None:
    """Refuse LoRA weights under a skipped block (with or without the `transformer.` prefix)."""
    skipped = list(skipped)
    prefixes = tuple(f"{name}." for name in skipped) + tuple(f"transformer.{name}." for name in skipped)
    bad = [key for key in layers if key.startswith(prefixes)]
    if bad:
        raise SimpleTunerAdapterError(f"the LoRA to save has weights in skipped blocks ({bad[:3]}); refusing to save it")


def install_saving_hook(patches: Patches, family_model: Any, session: TrainingSession) -> None:
    """Wrap `family_model.save_lora_weights` (undone with `patches`)."""
    original = family_model.save_lora_weights

    @functools.wraps(original)
    def save_lora_weights(*args: Any, **kwargs: Any):
        directory = args[0] if args else kwargs.get("save_directory")
        layers = kwargs.get("transformer_lora_layers")
        if layers and session.handle is not None:
            check_lora_keys(layers, session.handle.skipped_block_names())
        result = original(*args, **kwargs)
        if layers and session.handle is not None and directory is not None:
            path = session.handle.save_plan(Path(directory))
            session.plan_files.append(path)
            session.log(f"saved the LoRA with its plan: {path}")
        return result

    patches.set(family_model, "save_lora_weights", save_lora_weights)
