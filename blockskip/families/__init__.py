"""What blockskip knows about each model family: block layouts, released configs, training-step inputs.

The bottom layer: nothing here imports another blockskip subpackage.
"""

from .layouts import BlockIO, ModelLayout, UnknownLayoutError, block_io_for, get_layout, register_block_io, register_model_layout
from .presets import PRESETS, ModelPreset, UnknownModelError, get_preset, resolve_model
from .step_inputs import StepShape, family_of, training_inputs

__all__ = [
    "BlockIO",
    "ModelLayout",
    "ModelPreset",
    "PRESETS",
    "StepShape",
    "UnknownLayoutError",
    "UnknownModelError",
    "block_io_for",
    "family_of",
    "get_layout",
    "get_preset",
    "register_block_io",
    "register_model_layout",
    "resolve_model",
    "training_inputs",
]
