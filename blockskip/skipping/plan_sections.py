"""The sections of a plan (`model`, `skip`, `residuals`, `patches`, `kept_blocks`) and how each is read from JSON.

`BlockSkipPlan` (in `plan`) puts them together and checks the rules that span sections.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Callable

RESIDUAL_MODES = ("online", "cached", "none")
OFFLOAD_TARGETS = ("cpu", "none", "drop")
PATCH_SCHEDULES = ("low_to_high", "high_to_low", "random", "resize", "fixed")
STORAGE_DTYPES = ("float8_e4m3fn", "float8_e5m2")


class BlockSkipPlanError(ValueError):
    """A plan is malformed, or does not fit the model it is applied to.

    `path` is the JSON path of the offending value (`skip.leading`), or `(file)` for problems
    with the file itself.
    """

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class ModelCheck:
    """Which model the plan was made for. Both fields are optional checks."""

    class_name: str | None = None
    num_blocks: int | None = None


@dataclass(frozen=True)
class SkipSpec:
    """Either explicit block counts or a ratio resolved per model (see `skip_table`)."""

    leading: int | None = None
    trailing: int | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class ResidualSettings:
    mode: str = "online"
    bank: str | None = None


@dataclass(frozen=True)
class PatchSettings:
    """Timestep-aware crop settings, consumed by `DynamicPatchCollator`.

    `multiple_of=None` means: derive the pixel granularity from the model (16 for FLUX/SD3,
    32 for Sana).
    """

    min_size: int = 256
    max_size: int = 512
    multiple_of: int | None = None
    schedule: str = "low_to_high"


@dataclass(frozen=True)
class KeptBlockSettings:
    """Memory trades for the kept (trained) blocks, applied by `blockskip.apply_memory_trades`.

    - `gradient_checkpointing`: recompute each kept block's activations in backward.
    - `storage_dtype`: keep the kept blocks' frozen weights in fp8 and upcast one layer at a time
      (`None` keeps the model's dtype). LoRA weights never change dtype.
    - `group_offload`: keep the kept blocks' frozen weights on the CPU and stream them to the GPU
      layer by layer, prefetching on a side stream (CUDA only).
    """

    gradient_checkpointing: bool = False
    storage_dtype: str | None = None
    group_offload: bool = False

    @property
    def is_default(self) -> bool:
        return self == KeptBlockSettings()


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A field spec: JSON key -> (attribute name, type check, type name, allows null).
FieldSpec = dict[str, tuple[str, Callable[[Any], bool], str, bool]]

MODEL_FIELDS: FieldSpec = {
    "class": ("class_name", lambda v: isinstance(v, str), "a string", True),
    "num_blocks": ("num_blocks", is_int, "an integer", True),
}
SKIP_FIELDS: FieldSpec = {
    "leading": ("leading", is_int, "an integer", True),
    "trailing": ("trailing", is_int, "an integer", True),
    "ratio": ("ratio", is_number, "a number", True),
}
RESIDUAL_FIELDS: FieldSpec = {
    "mode": ("mode", lambda v: isinstance(v, str), "a string", False),
    "bank": ("bank", lambda v: isinstance(v, str), "a string", True),
}
PATCH_FIELDS: FieldSpec = {
    "min_size": ("min_size", is_int, "an integer", False),
    "max_size": ("max_size", is_int, "an integer", False),
    "multiple_of": ("multiple_of", is_int, "an integer", True),
    "schedule": ("schedule", lambda v: isinstance(v, str), "a string", False),
}
KEPT_BLOCK_FIELDS: FieldSpec = {
    "gradient_checkpointing": ("gradient_checkpointing", lambda v: isinstance(v, bool), "true or false", False),
    "storage_dtype": ("storage_dtype", lambda v: isinstance(v, str), "a string", True),
    "group_offload": ("group_offload", lambda v: isinstance(v, bool), "true or false", False),
}
TOP_LEVEL_KEYS = ("format", "version", "model", "skip", "residuals", "offload", "patches", "kept_blocks")


def read_section(data: Any, path: str, spec: FieldSpec) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BlockSkipPlanError(path, f"expected an object, got {json.dumps(data)}")
    values = {}
    for key, value in data.items():
        if key not in spec:
            raise BlockSkipPlanError(f"{path}.{key}", f"unknown key (known: {', '.join(spec)})")
        attribute, check, type_name, nullable = spec[key]
        if value is None and nullable:
            continue
        if not check(value):
            raise BlockSkipPlanError(f"{path}.{key}", f"{json.dumps(value)} is not {type_name}")
        values[attribute] = value
    return values


def require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise BlockSkipPlanError(path, message)


def as_dict(section: Any) -> dict[str, Any]:
    return {item.name: getattr(section, item.name) for item in fields(section)}
