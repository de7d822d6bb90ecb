"""Dynamic computation inside the kept blocks (DyDiT's timestep-wise dynamic width and
spatial-wise dynamic tokens) and timestep-dependent LoRA, composing with block skipping (see docs/dynamic.md)."""

from .patch import DynamicHandle, apply_dynamic_computation, apply_dynamic_tokens, apply_dynamic_width, get_dynamic_computation
from .settings import DynamicSettings, DynamicSettingsError
from .td_lora import TimestepLoRAHandle, apply_timestep_lora, get_timestep_lora, load_timestep_lora

__all__ = [
    "DynamicHandle", "DynamicSettings", "DynamicSettingsError", "apply_dynamic_computation", "apply_dynamic_tokens",
    "apply_dynamic_width", "get_dynamic_computation", "TimestepLoRAHandle", "apply_timestep_lora", "get_timestep_lora",
    "load_timestep_lora",
]
