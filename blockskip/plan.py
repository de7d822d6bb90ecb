"""BlockSkipPlan: what to skip, where the residuals come from, and how to crop.

A plan is a small versioned JSON document. Every field has a default, and every error names the
JSON path of the offending value:

    {
      "format": "blockskip.plan", "version": 1,
      "model": {"class": "FluxTransformer2DModel", "num_blocks": 57},
      "skip": {"leading": 7, "trailing": 10},
      "residuals": {"mode": "online", "bank": null},
      "offload": "cpu",
      "patches": {"min_size": 256, "max_size": 512, "multiple_of": 16, "schedule": "low_to_high"}
    }

Example:
    >>> plan = BlockSkipPlan.from_dict({"skip": {"leading": 7, "trailing": 10}})
    >>> plan.skip.leading, plan.residuals.mode, plan.offload
    (7, 'online', 'cpu')
    >>> BlockSkipPlan.from_dict({"skip": {"leading": -1}})
    Traceback (most recent call last):
    ...
    blockskip.plan.BlockSkipPlanError: skip.leading: -1 must be >= 0
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from .skip_table import SkipSplit, resolve_ratio

PLAN_FORMAT = "blockskip.plan"
PLAN_VERSION = 1
PLAN_FILENAME = "blockskip_plan.json"

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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A field spec: JSON key -> (attribute name, type check, type name, allows null).
_FieldSpec = dict[str, tuple[str, Callable[[Any], bool], str, bool]]

_MODEL_FIELDS: _FieldSpec = {
    "class": ("class_name", lambda v: isinstance(v, str), "a string", True),
    "num_blocks": ("num_blocks", _is_int, "an integer", True),
}
_SKIP_FIELDS: _FieldSpec = {
    "leading": ("leading", _is_int, "an integer", True),
    "trailing": ("trailing", _is_int, "an integer", True),
    "ratio": ("ratio", _is_number, "a number", True),
}
_RESIDUAL_FIELDS: _FieldSpec = {
    "mode": ("mode", lambda v: isinstance(v, str), "a string", False),
    "bank": ("bank", lambda v: isinstance(v, str), "a string", True),
}
_PATCH_FIELDS: _FieldSpec = {
    "min_size": ("min_size", _is_int, "an integer", False),
    "max_size": ("max_size", _is_int, "an integer", False),
    "multiple_of": ("multiple_of", _is_int, "an integer", True),
    "schedule": ("schedule", lambda v: isinstance(v, str), "a string", False),
}
_KEPT_BLOCK_FIELDS: _FieldSpec = {
    "gradient_checkpointing": ("gradient_checkpointing", lambda v: isinstance(v, bool), "true or false", False),
    "storage_dtype": ("storage_dtype", lambda v: isinstance(v, str), "a string", True),
    "group_offload": ("group_offload", lambda v: isinstance(v, bool), "true or false", False),
}
_TOP_LEVEL_KEYS = ("format", "version", "model", "skip", "residuals", "offload", "patches", "kept_blocks")


def _read_section(data: Any, path: str, spec: _FieldSpec) -> dict[str, Any]:
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


def _require(condition: bool, path: str, message: str) -> None:
    if not condition:
        raise BlockSkipPlanError(path, message)


@dataclass(frozen=True)
class BlockSkipPlan:
    """A validated block-skip plan. Build it with `from_dict` or `load`; never mutate it.

    Example:
        >>> plan = BlockSkipPlan.from_dict({"skip": {"ratio": 0.3}, "model": {"class": "FluxTransformer2DModel"}})
        >>> plan.resolve_skip("FluxTransformer2DModel", 57).leading
        7
    """

    model: ModelCheck = field(default_factory=ModelCheck)
    skip: SkipSpec = field(default_factory=SkipSpec)
    residuals: ResidualSettings = field(default_factory=ResidualSettings)
    offload: str = "cpu"
    patches: PatchSettings = field(default_factory=PatchSettings)
    kept_blocks: KeptBlockSettings = field(default_factory=KeptBlockSettings)

    def __post_init__(self):
        self._validate()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_dict(cls, data: Any) -> "BlockSkipPlan":
        """Parse and validate a plan from its JSON-compatible dict."""
        _require(isinstance(data, dict), "(root)", f"a plan is a JSON object, got {json.dumps(data)[:80]}")
        for key in data:
            _require(key in _TOP_LEVEL_KEYS, key, f"unknown key (known: {', '.join(_TOP_LEVEL_KEYS)})")
        plan_format = data.get("format", PLAN_FORMAT)
        _require(plan_format == PLAN_FORMAT, "format", f"{json.dumps(plan_format)} is not {json.dumps(PLAN_FORMAT)}")
        version = data.get("version", PLAN_VERSION)
        _require(_is_int(version), "version", f"{json.dumps(version)} is not an integer")
        _require(
            version <= PLAN_VERSION,
            "version",
            f"{version} is newer than this blockskip understands ({PLAN_VERSION}); upgrade blockskip",
        )
        _require(version >= 1, "version", f"{version} must be >= 1")
        offload = data.get("offload", "cpu")
        _require(isinstance(offload, str), "offload", f"{json.dumps(offload)} is not a string")
        return cls(
            model=ModelCheck(**_read_section(data.get("model"), "model", _MODEL_FIELDS)),
            skip=SkipSpec(**_read_section(data.get("skip"), "skip", _SKIP_FIELDS)),
            residuals=ResidualSettings(**_read_section(data.get("residuals"), "residuals", _RESIDUAL_FIELDS)),
            offload=offload,
            patches=PatchSettings(**_read_section(data.get("patches"), "patches", _PATCH_FIELDS)),
            kept_blocks=KeptBlockSettings(**_read_section(data.get("kept_blocks"), "kept_blocks", _KEPT_BLOCK_FIELDS)),
        )

    @classmethod
    def coerce(cls, plan: "BlockSkipPlan | dict | str | os.PathLike") -> "BlockSkipPlan":
        """A plan from a `BlockSkipPlan`, its dict, or the path of a plan file."""
        if isinstance(plan, cls):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan)
        return cls.load(plan)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BlockSkipPlan":
        """Read a plan from a JSON file; a LoRA folder holding `blockskip_plan.json` works too."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise BlockSkipPlanError("(file)", f"cannot read plan {str(path)!r}: {error.strerror or error}") from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BlockSkipPlanError(
                "(file)", f"{str(path)!r} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})"
            ) from error
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-compatible dict, with every field spelled out.

        `kept_blocks` is written only when it asks for a trade, so a plan without trades stays
        readable by blockskip versions that predate the section.
        """
        data = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": {"class": self.model.class_name, "num_blocks": self.model.num_blocks},
            "skip": {key: value for key, value in _as_dict(self.skip).items() if value is not None}
            or {"leading": 0, "trailing": 0},
            "residuals": _as_dict(self.residuals),
            "offload": self.offload,
            "patches": _as_dict(self.patches),
        }
        if not self.kept_blocks.is_default:
            data["kept_blocks"] = _as_dict(self.kept_blocks)
        return data

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan as JSON, atomically. A directory gets `blockskip_plan.json` inside it."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
            handle.write(text)
            temporary = Path(handle.name)
        temporary.chmod(0o666 & ~_current_umask())  # NamedTemporaryFile creates 0600; a plan is for sharing
        os.replace(temporary, path)
        return path

    # ----------------------------------------------------------------- resolution

    def check_model(self, class_name: str, num_blocks: int) -> None:
        """Refuse a model that is not the one the plan was made for."""
        expected = self.model
        if expected.class_name is not None and expected.class_name != class_name:
            raise BlockSkipPlanError(
                "model.class", f"the plan was made for {expected.class_name}, but the model is {class_name}"
            )
        if expected.num_blocks is not None and expected.num_blocks != num_blocks:
            raise BlockSkipPlanError(
                "model.num_blocks",
                f"the plan was made for {expected.num_blocks} blocks, but this {class_name} has {num_blocks}",
            )

    def resolve_skip(self, class_name: str, num_blocks: int) -> SkipSplit:
        """Leading and trailing block counts for a model with `num_blocks` transformer blocks."""
        self.check_model(class_name, num_blocks)
        if self.skip.ratio is not None:
            split = resolve_ratio(class_name, num_blocks, self.skip.ratio)
            path = "skip.ratio"
        else:
            split = SkipSplit(self.skip.leading or 0, self.skip.trailing or 0, "explicit block counts")
            path = "skip.leading" if split.trailing == 0 else "skip"
        if split.leading + split.trailing >= num_blocks:
            what = f"ratio {self.skip.ratio} skips" if self.skip.ratio is not None else "skips"
            raise BlockSkipPlanError(
                path,
                f"{what} {split.leading} leading + {split.trailing} trailing blocks, "
                f"but the model's {num_blocks} blocks must keep at least one",
            )
        return split

    # ----------------------------------------------------------------- validation

    def _validate(self) -> None:
        skip = self.skip
        for name in ("leading", "trailing"):
            value = getattr(skip, name)
            _require(value is None or value >= 0, f"skip.{name}", f"{value} must be >= 0")
        if skip.ratio is not None:
            _require(
                skip.leading is None and skip.trailing is None,
                "skip.ratio",
                "give either a ratio or leading/trailing counts, not both",
            )
            _require(0 <= skip.ratio < 1, "skip.ratio", f"{skip.ratio} must be in [0, 1)")
        num_blocks = self.model.num_blocks
        if num_blocks is not None:
            _require(num_blocks >= 1, "model.num_blocks", f"{num_blocks} must be >= 1")
            for name in ("leading", "trailing"):
                value = getattr(skip, name)
                _require(
                    value is None or value < num_blocks,
                    f"skip.{name}",
                    f"{value} exceeds the model's {num_blocks} blocks",
                )
            total = (skip.leading or 0) + (skip.trailing or 0)
            _require(
                total < num_blocks,
                "skip",
                f"{skip.leading or 0} leading + {skip.trailing or 0} trailing blocks leave none of the "
                f"model's {num_blocks} blocks to train",
            )

        residuals = self.residuals
        _require(
            residuals.mode in RESIDUAL_MODES,
            "residuals.mode",
            f"{json.dumps(residuals.mode)} is not one of {', '.join(RESIDUAL_MODES)}",
        )
        if residuals.mode == "cached":
            _require(residuals.bank is not None, "residuals.bank", "cached residuals need the path of a residual bank")
        _require(
            self.offload in OFFLOAD_TARGETS,
            "offload",
            f"{json.dumps(self.offload)} is not one of {', '.join(OFFLOAD_TARGETS)}",
        )
        if self.offload == "drop":
            _require(
                residuals.mode != "online",
                "offload",
                '"drop" discards the skipped blocks, but online residuals need them; use "cpu"',
            )

        patches = self.patches
        _require(patches.min_size > 0, "patches.min_size", f"{patches.min_size} must be > 0")
        _require(
            patches.max_size >= patches.min_size,
            "patches.max_size",
            f"{patches.max_size} is smaller than patches.min_size ({patches.min_size})",
        )
        if patches.multiple_of is not None:
            _require(patches.multiple_of > 0, "patches.multiple_of", f"{patches.multiple_of} must be > 0")
            for name in ("min_size", "max_size"):
                value = getattr(patches, name)
                _require(
                    value % patches.multiple_of == 0,
                    f"patches.{name}",
                    f"{value} is not a multiple of patches.multiple_of ({patches.multiple_of})",
                )
        _require(
            patches.schedule in PATCH_SCHEDULES,
            "patches.schedule",
            f"{json.dumps(patches.schedule)} is not one of {', '.join(PATCH_SCHEDULES)}",
        )
        storage_dtype = self.kept_blocks.storage_dtype
        _require(
            storage_dtype is None or storage_dtype in STORAGE_DTYPES,
            "kept_blocks.storage_dtype",
            f"{json.dumps(storage_dtype)} is not one of {', '.join(STORAGE_DTYPES)} (or null)",
        )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _as_dict(section: Any) -> dict[str, Any]:
    return {item.name: getattr(section, item.name) for item in fields(section)}
