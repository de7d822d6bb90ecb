"""Dynamic computation inside the kept blocks (DyDiT's timestep-wise dynamic width and
spatial-wise dynamic tokens), composing with block skipping (see docs/dynamic.md)."""

from .patch import DynamicHandle, apply_dynamic_computation, apply_dynamic_tokens, apply_dynamic_width, get_dynamic_computation
from .settings import DynamicSettings, DynamicSettingsError

__all__ = [
    "DynamicHandle", "DynamicSettings", "DynamicSettingsError", "apply_dynamic_computation", "apply_dynamic_tokens",
    "apply_dynamic_width", "get_dynamic_computation",
]
