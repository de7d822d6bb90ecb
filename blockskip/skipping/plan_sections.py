"""The sections of a plan (`model`, `skip`, `residuals`, `patches`, `kept_blocks`): their fields,
the kind of value each field holds, and the bounds that keep a plan meaningful.

`BlockSkipPlan` (in `plan`) puts them together and checks the rules that span sections;
`plan_values` turns JSON and a caller's Python values into these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, NamedTuple

RESIDUAL_MODES = ("online", "cached", "none")
OFFLOAD_TARGETS = ("cpu", "none", "drop")
PATCH_SCHEDULES = ("low_to_high", "high_to_low", "random", "resize", "fixed")
STORAGE_DTYPES = ("float8_e4m3fn", "float8_e5m2")

# Bounds on numbers no real plan comes near (the deepest supported model has 60 blocks, a
# training crop rarely exceeds 2048 px): past them a value is a typo or garbage, not a choice.
MAX_BLOCKS = 1000
MAX_CROP_SIZE = 16384


class BlockSkipPlanError(ValueError):
    """A plan is malformed, or does not fit the model it is applied to.

    `path` is the JSON path of the offending value (`skip.leading`), the file's name for problems
    with the file itself, or `(plan)` when what was given is not a plan at all.
    """

    def __init__(self, path: str, message: str):
        self.path = path
        self.detail = message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class ModelCheck:
    """Which model the plan was made for. Both fields are optional checks."""

    class_name: str | None = None
    num_blocks: int | None = None


@dataclass(frozen=True)
class SkipSpec:
    """Either explicit block counts or a ratio resolved per model (see `skip_table`).

    Without a ratio, a count left out is 0, so a plan read back from its own file is equal to it.
    """

    leading: int | None = None
    trailing: int | None = None
    ratio: float | None = None

    def __post_init__(self):
        if self.ratio is None:
            for name in ("leading", "trailing"):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, 0)


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


# A kind of value: how to recognise it, and how an error names it.
VALUE_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "integer": (is_int, "an integer"),
    "number": (is_number, "a number"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, str), "a string (a path)"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
}


class Field(NamedTuple):
    """One JSON key of a section: the dataclass attribute it fills, its kind, whether null is allowed."""

    attribute: str
    kind: str
    nullable: bool


FieldSpec = dict[str, Field]

MODEL_FIELDS: FieldSpec = {"class": Field("class_name", "string", True), "num_blocks": Field("num_blocks", "integer", True)}
SKIP_FIELDS: FieldSpec = {
    "leading": Field("leading", "integer", True),
    "trailing": Field("trailing", "integer", True),
    "ratio": Field("ratio", "number", True),
}
RESIDUAL_FIELDS: FieldSpec = {"mode": Field("mode", "string", False), "bank": Field("bank", "path", True)}
PATCH_FIELDS: FieldSpec = {
    "min_size": Field("min_size", "integer", False),
    "max_size": Field("max_size", "integer", False),
    "multiple_of": Field("multiple_of", "integer", True),
    "schedule": Field("schedule", "string", False),
}
KEPT_BLOCK_FIELDS: FieldSpec = {
    "gradient_checkpointing": Field("gradient_checkpointing", "boolean", False),
    "storage_dtype": Field("storage_dtype", "string", True),
    "group_offload": Field("group_offload", "boolean", False),
}
# JSON key -> (dataclass, fields), in the order a plan is written.
SECTIONS: dict[str, tuple[type, FieldSpec]] = {
    "model": (ModelCheck, MODEL_FIELDS),
    "skip": (SkipSpec, SKIP_FIELDS),
    "residuals": (ResidualSettings, RESIDUAL_FIELDS),
    "patches": (PatchSettings, PATCH_FIELDS),
    "kept_blocks": (KeptBlockSettings, KEPT_BLOCK_FIELDS),
}
TOP_LEVEL_KEYS = ("format", "version", "model", "skip", "residuals", "offload", "patches", "kept_blocks")


def require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise BlockSkipPlanError(path, message)


def as_dict(section: Any) -> dict[str, Any]:
    return {item.name: getattr(section, item.name) for item in fields(section)}
