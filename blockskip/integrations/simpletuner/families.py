"""The SimpleTuner model families the adapter supports, and their transformers' block layouts.

SimpleTuner ships its own copies of the diffusers transformers (FLUX:
`simpletuner.helpers.models.flux.transformer.FluxTransformer2DModel`). The model class and the
double-stream block keep diffusers' names and streams, so blockskip's layouts match them by name.
The single-stream block keeps the name `FluxSingleTransformerBlock` but not diffusers' streams:
its `forward(hidden_states, temb, ...)` takes the joint `[text; image]` sequence the model forward
concatenated, and returns it. `register_trainer_blocks` reads that from the block's signature and
registers the exact class (not the name, which diffusers' own class shares).

Example:
    >>> family_for("flux").transformer_class
    'FluxTransformer2DModel'
    >>> family_for("sdxl")
    Traceback (most recent call last):
    ...
    blockskip.integrations.simpletuner.errors.SimpleTunerAdapterError: model_family 'sdxl' is not supported by the blockskip SimpleTuner adapter (supported: flux)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from ...families.layouts import block_io_for, get_layout, register_block_io
from .errors import SimpleTunerAdapterError


@dataclass(frozen=True)
class TrainerFamily:
    """One SimpleTuner model family: its transformer class and the VAE factor of its cached latents."""

    model_family: str
    transformer_class: str
    vae_scale_factor: int


FAMILIES: dict[str, TrainerFamily] = {
    "flux": TrainerFamily("flux", "FluxTransformer2DModel", 8),
}


def family_for(model_family: str | None) -> TrainerFamily:
    """The supported family named `model_family` (SimpleTuner's `--model_family`), or an error."""
    family = FAMILIES.get(str(model_family).lower())
    if family is None:
        raise SimpleTunerAdapterError(
            f"model_family {model_family!r} is not supported by the blockskip SimpleTuner adapter "
            f"(supported: {', '.join(FAMILIES)})"
        )
    return family


def register_trainer_blocks(model: nn.Module) -> list[str]:
    """Register the exact block classes of a trainer's own transformer whose streams differ from diffusers'.

    Returns the qualified names of the classes registered. A block whose `forward` has no
    `encoder_hidden_states` parameter but whose name-matched layout expects one takes and returns
    the joint sequence.
    """
    registered = []
    for block_list in get_layout(model):
        for cls in {type(block) for block in block_list.blocks}:
            known = block_io_for(cls)
            parameters = inspect.signature(cls.forward).parameters
            if known.text_arg is None or known.text_arg in parameters:
                continue
            if known.image_arg not in parameters:
                raise SimpleTunerAdapterError(
                    f"{cls.__module__}.{cls.__qualname__}.forward takes neither {known.text_arg!r} nor "
                    f"{known.image_arg!r}: blockskip cannot tell which argument carries its streams"
                )
            register_block_io(cls, returns=("joint",), image_arg=known.image_arg, text_arg=None, exact=True)
            registered.append(f"{cls.__module__}.{cls.__qualname__}")
    return registered


__all__ = ["FAMILIES", "TrainerFamily", "family_for", "register_trainer_blocks"]
