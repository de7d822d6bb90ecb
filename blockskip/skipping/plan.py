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
    blockskip.skipping.plan_sections.BlockSkipPlanError: skip.leading: -1 must be >= 0
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .lora_files import LORA_WEIGHT_NAME, plan_in_weights
from .plan_sections import (
    MAX_BLOCKS,
    MAX_CROP_SIZE,
    OFFLOAD_TARGETS,
    PATCH_SCHEDULES,
    RESIDUAL_MODES,
    SECTIONS,
    STORAGE_DTYPES,
    TOP_LEVEL_KEYS,
    BlockSkipPlanError,
    KeptBlockSettings,
    ModelCheck,
    PatchSettings,
    ResidualSettings,
    SkipSpec,
    as_dict,
    require,
)
from .plan_values import describe, field_value, parse_plan_bytes, read_section
from .skip_table import SkipSplit, resolve_ratio

PLAN_FORMAT = "blockskip.plan"
PLAN_VERSION = 1
PLAN_FILENAME = "blockskip_plan.json"

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
        """Parse and validate a plan from its JSON-compatible dict.

        Values may also be the natural Python spellings of JSON ones: a `pathlib.Path` for a
        path, numpy numbers or 0-d tensors for numbers (see `plan_values`).
        """
        require(isinstance(data, dict), "(root)", f"a plan is a JSON object, got {describe(data)}")
        for key in data:
            name = key if isinstance(key, str) else describe(key)
            require(key in TOP_LEVEL_KEYS, name, f"unknown key (known: {', '.join(TOP_LEVEL_KEYS)})")
        plan_format = field_value(data.get("format", PLAN_FORMAT), "string", "format")
        require(plan_format == PLAN_FORMAT, "format", f"{describe(plan_format)} is not {json.dumps(PLAN_FORMAT)}")
        version = field_value(data.get("version", PLAN_VERSION), "integer", "version")
        require(
            version <= PLAN_VERSION,
            "version",
            f"{version} is newer than this blockskip understands ({PLAN_VERSION}); upgrade blockskip",
        )
        require(version >= 1, "version", f"{version} must be >= 1")
        sections = {
            name: section(**read_section(data.get(name), name, spec)) for name, (section, spec) in SECTIONS.items()
        }
        return cls(offload=field_value(data.get("offload", "cpu"), "string", "offload"), **sections)

    @classmethod
    def coerce(cls, plan: "BlockSkipPlan | dict | str | os.PathLike") -> "BlockSkipPlan":
        """A plan from a `BlockSkipPlan`, its dict, or the path of a plan file."""
        if isinstance(plan, cls):
            return plan
        if isinstance(plan, dict):
            return cls.from_dict(plan)
        if isinstance(plan, (str, os.PathLike)) and str(plan):
            return cls.load(plan)
        raise BlockSkipPlanError(
            "(plan)", f"a plan is a BlockSkipPlan, a dict or the path of a plan file, not {describe(plan)}"
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BlockSkipPlan":
        """Read a plan from a JSON file; a LoRA folder holding `blockskip_plan.json` works too."""
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILENAME
        try:
            raw = path.read_bytes()
        except OSError as error:
            raise BlockSkipPlanError(str(path), f"cannot read the plan: {error.strerror or error}") from error
        plan = cls.from_dict(parse_plan_bytes(raw, str(path)))
        weights = path.parent / LORA_WEIGHT_NAME
        if path.name == PLAN_FILENAME and weights.is_file():
            _check_against_weights(cls, plan, path, weights)
        return plan

    def to_dict(self) -> dict[str, Any]:
        """The plan as a JSON-compatible dict, with every field spelled out.

        `kept_blocks` is written only when it asks for a trade, so a plan without trades stays
        readable by blockskip versions that predate the section.
        """
        data = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": {"class": self.model.class_name, "num_blocks": self.model.num_blocks},
            "skip": {key: value for key, value in as_dict(self.skip).items() if value is not None},
            "residuals": as_dict(self.residuals),
            "offload": self.offload,
            "patches": as_dict(self.patches),
        }
        if not self.kept_blocks.is_default:
            data["kept_blocks"] = as_dict(self.kept_blocks)
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
            require(value is None or value >= 0, f"skip.{name}", f"{describe(value)} must be >= 0")
            require(value is None or value <= MAX_BLOCKS, f"skip.{name}", f"{describe(value)} is more blocks than any model has (at most {MAX_BLOCKS})")
        class_name = self.model.class_name
        require(class_name is None or class_name.strip() != "", "model.class", "is empty; give the model's class name or null")
        if skip.ratio is not None:
            require(
                skip.leading is None and skip.trailing is None,
                "skip.ratio",
                "give either a ratio or leading/trailing counts, not both",
            )
            require(0 <= skip.ratio < 1, "skip.ratio", f"{skip.ratio} must be in [0, 1)")
        num_blocks = self.model.num_blocks
        if num_blocks is not None:
            require(1 <= num_blocks <= MAX_BLOCKS, "model.num_blocks", f"{describe(num_blocks)} must be in 1..{MAX_BLOCKS}")
            for name in ("leading", "trailing"):
                value = getattr(skip, name)
                require(
                    value is None or value < num_blocks,
                    f"skip.{name}",
                    f"{value} exceeds the model's {num_blocks} blocks",
                )
            total = (skip.leading or 0) + (skip.trailing or 0)
            require(
                total < num_blocks,
                "skip",
                f"{skip.leading or 0} leading + {skip.trailing or 0} trailing blocks leave none of the "
                f"model's {num_blocks} blocks to train",
            )

        residuals = self.residuals
        require(
            residuals.mode in RESIDUAL_MODES,
            "residuals.mode",
            f"{json.dumps(residuals.mode)} is not one of {', '.join(RESIDUAL_MODES)}",
        )
        if residuals.mode == "cached":
            require(residuals.bank is not None, "residuals.bank", "cached residuals need the path of a residual bank")
        require(
            residuals.bank is None or residuals.bank.strip() != "",
            "residuals.bank",
            "is empty (it would name the working directory); give the bank's folder or null",
        )
        require(
            self.offload in OFFLOAD_TARGETS,
            "offload",
            f"{json.dumps(self.offload)} is not one of {', '.join(OFFLOAD_TARGETS)}",
        )
        if self.offload == "drop":
            require(
                residuals.mode != "online",
                "offload",
                '"drop" discards the skipped blocks, but online residuals need them; use "cpu"',
            )

        patches = self.patches
        for name in ("min_size", "max_size", "multiple_of"):
            value = getattr(patches, name)
            require(
                value is None or value <= MAX_CROP_SIZE,
                f"patches.{name}",
                f"{describe(value)} is past any training crop size (at most {MAX_CROP_SIZE} px)",
            )
        require(patches.min_size > 0, "patches.min_size", f"{patches.min_size} must be > 0")
        require(
            patches.max_size >= patches.min_size,
            "patches.max_size",
            f"{patches.max_size} is smaller than patches.min_size ({patches.min_size})",
        )
        if patches.multiple_of is not None:
            require(patches.multiple_of > 0, "patches.multiple_of", f"{patches.multiple_of} must be > 0")
            for name in ("min_size", "max_size"):
                value = getattr(patches, name)
                require(
                    value % patches.multiple_of == 0,
                    f"patches.{name}",
                    f"{value} is not a multiple of patches.multiple_of ({patches.multiple_of})",
                )
        require(
            patches.schedule in PATCH_SCHEDULES,
            "patches.schedule",
            f"{json.dumps(patches.schedule)} is not one of {', '.join(PATCH_SCHEDULES)}",
        )
        storage_dtype = self.kept_blocks.storage_dtype
        require(
            storage_dtype is None or storage_dtype in STORAGE_DTYPES,
            "kept_blocks.storage_dtype",
            f"{json.dumps(storage_dtype)} is not one of {', '.join(STORAGE_DTYPES)} (or null)",
        )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_against_weights(cls, plan: "BlockSkipPlan", path: Path, weights: Path) -> None:
    """A LoRA folder whose plan copy disagrees with the plan inside its weights is a torn save."""
    try:
        recorded = plan_in_weights(weights)
    except Exception as error:  # noqa: BLE001 — a damaged weights file: say so rather than guess
        raise BlockSkipPlanError(str(path), f"cannot read the LoRA weights beside it: {error}") from error
    if recorded is not None and cls.from_dict(recorded) != plan:
        raise BlockSkipPlanError(
            str(path),
            f"this plan and the plan recorded in {weights.name} disagree — a save was interrupted between "
            "the two; save the LoRA again (or, if the weights are the ones you want, write their recorded plan "
            "with blockskip.skipping.lora_files.plan_in_weights)",
        )
