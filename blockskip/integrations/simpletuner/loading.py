"""Skip blocks in the transformer SimpleTuner loads, before it is quantized, given LoRA or moved to the GPU.

`Trainer.run()` calls `init_load_base_model()`, which calls `ModelFoundation.load_model(
move_to_device=False)` on the model family object (`Flux`): the transformer is loaded with
`MODEL_CLASS.from_pretrained(path, subfolder="transformer", torch_dtype=weight_dtype)` into
`self.model`. Then come `init_precision()` (quanto/torchao quantization of the module tree), TREAD
and DiffusionBlocks set-up (refused), `init_trainable_peft_adapter()` (`add_lora_adapter`) and
`move_models(destination="accelerator")`. The adapter wraps `load_model` on that one family object
(an instance attribute, deleted afterwards) and applies the plan right after loading, so

- the skipped blocks' weights stay on the CPU when SimpleTuner moves the model to the GPU, and
  quantization never sees them (they are streamed in the load dtype for the online residuals);
- `add_lora_adapter` finds no layer in the parameter-free stand-ins;
- the model keeps its class and every kept block its index.

When a caller asks `load_model` to move the model itself, the wrapper loads without moving,
skips, and then moves the model as SimpleTuner would have (`.to(device, dtype=weight_dtype)`).
"""

from __future__ import annotations

import functools
from typing import Any

from ...skipping.skip import apply_block_skip, get_block_skip
from ..patching import Patches
from .errors import SimpleTunerAdapterError
from .families import register_trainer_blocks
from .session import TrainingSession


def install_loading_hook(patches: Patches, family_model: Any, session: TrainingSession) -> None:
    """Wrap `family_model.load_model` (undone with `patches`)."""
    original = family_model.load_model

    @functools.wraps(original)
    def load_model(move_to_device: bool = True, *args: Any, **kwargs: Any):
        result = original(False, *args, **kwargs)
        skip_loaded_transformer(family_model, session)
        if move_to_device and family_model.model is not None:
            family_model.model.to(family_model.accelerator.device, dtype=family_model.config.weight_dtype)
        return result

    patches.set(family_model, "load_model", load_model)


def skip_loaded_transformer(family_model: Any, session: TrainingSession) -> None:
    """Apply the plan to `family_model.model` (the transformer SimpleTuner just loaded)."""
    model = family_model.model
    if model is None:
        raise SimpleTunerAdapterError(f"{type(family_model).__name__}.load_model() loaded no transformer")
    model = getattr(model, "_orig_mod", model)
    expected = session.family.transformer_class if session.family else None
    if expected is not None and type(model).__name__ != expected:
        raise SimpleTunerAdapterError(
            f"SimpleTuner loaded a {type(model).__name__}, but the adapter expects {expected} for "
            f"model_family {session.family.model_family!r}"
        )
    if get_block_skip(model) is not None:
        return  # load_model ran again without loading a new transformer
    session.registered_blocks = register_trainer_blocks(model)
    session.handle = apply_block_skip(model, session.plan)
    session.log(session.handle.summary())
    if session.registered_blocks:
        session.log(f"joint-sequence block layout registered for {', '.join(session.registered_blocks)}")
