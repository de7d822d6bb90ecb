"""Find the plan that fits a memory budget with the least quality risk.

`plan_for_budget(model, budget_bytes)` searches the skip ratio (from the model's selection table,
`blockskip.skipping.skip_table`), the training resolution, fp8 storage of the kept blocks' weights, gradient
checkpointing and group offload, prices each candidate with `estimate_step`, and returns the
first that fits in this order of preference:

1. quality: lower skip ratio, then the model's precision before fp8, then the higher resolution;
2. speed: no trade, then gradient checkpointing (~30% more compute), then checkpointing plus
   group offload (weights cross PCIe every step).

A quality level (skip ratio and precision) is first bounded cheaply: if the bytes that stay
resident between steps already exceed the budget, or the most frugal variant at the lowest
resolution does not fit, the level is skipped without pricing the others. `min_quality` bounds the search: `"lossless"` allows
only checkpointing and offload (training computes what plain LoRA computes), `"bf16"` adds skipping
and lower resolutions, `"fp8"` (the default) adds fp8 weight storage.

A plan fits when its estimated peak plus `reserve_bytes` (CUDA context and allocator slack,
0.5 GiB by default) is at most the budget.

Example:
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> choice = plan_for_budget(config, 650_000, resolutions=(64, 32), text_length=8, reserve_bytes=0,
    ...     dtype="float32", min_quality="bf16", allow_offload=False, baseline=False)
    >>> choice.estimate.peak_bytes <= 650_000, choice.candidate.describe()
    (True, 'skip 30%, 64px, full-precision weights, checkpointing')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..families.layouts import get_layout
from ..families.presets import resolve_model
from ..families.step_inputs import StepShape, family_of
from ..skipping.inspection import model_from_config
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip_table import get_skip_table, resolve_ratio
from ..training.training_step import DEFAULT_LORA_TARGETS, TrainingSetup
from .memory import format_bytes
from .report import StepEstimate
from .step import DTYPES, estimate_step
from .training_memory import step_defaults

QUALITY_LEVELS = ("lossless", "bf16", "fp8")
GIB = 1024**3


class NoPlanFitsError(ValueError):
    """Nothing the search may use fits the budget; the message names the smallest candidate."""


@dataclass(frozen=True)
class Candidate:
    ratio: float
    resolution: int
    fp8: bool
    checkpointing: bool
    offload: bool

    def describe(self) -> str:
        parts = [f"skip {round(self.ratio * 100)}%", f"{self.resolution}px", "fp8 weights" if self.fp8 else "full-precision weights"]
        if self.checkpointing:
            parts.append("checkpointing")
        if self.offload:
            parts.append("group offload")
        return ", ".join(parts)


@dataclass
class PlanChoice:
    """The chosen plan, its estimate, the baseline's, and every candidate priced on the way."""

    plan: BlockSkipPlan
    candidate: Candidate
    estimate: StepEstimate
    baseline: StepEstimate | None
    budget_bytes: int
    reserve_bytes: int
    tried: list[tuple[Candidate, int | None, str]] = field(default_factory=list)  # (candidate, peak, verdict)
    model: str = ""

    def explain(self) -> str:
        """Why this plan: the search in order, then the choice."""
        lines = [f"budget {format_bytes(self.budget_bytes)} (minus {format_bytes(self.reserve_bytes)} reserve for the CUDA context)"]
        for candidate, peak, verdict in self.tried:
            price = format_bytes(peak) if peak is not None else "not priced"
            lines.append(f"  {candidate.describe():<70} {price:>10}  {verdict}")
        lines.append(f"chose: {self.candidate.describe()} — the lowest-risk candidate that fits")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "plan": self.plan.to_dict(),
            "budget_bytes": self.budget_bytes,
            "reserve_bytes": self.reserve_bytes,
            "estimate": self.estimate.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "tried": [
                {"candidate": candidate.__dict__, "peak_bytes": peak, "verdict": verdict}
                for candidate, peak, verdict in self.tried
            ],
        }


def _ratios(class_name: str, num_blocks: int, max_ratio: float) -> list[float]:
    table = sorted(get_skip_table(class_name, num_blocks).entries)
    ratios = table or [0.3, 0.4, 0.5]
    return [0.0] + [ratio for ratio in ratios if 0 < ratio <= max_ratio + 1e-9]


def _plan_for(candidate: Candidate, class_name: str, num_blocks: int, baseline_resolution: int, multiple: int, residuals: str) -> BlockSkipPlan:
    split = resolve_ratio(class_name, num_blocks, candidate.ratio) if candidate.ratio else None
    data: dict[str, Any] = {
        "model": {"class": class_name, "num_blocks": num_blocks},
        "skip": {"leading": split.leading if split else 0, "trailing": split.trailing if split else 0},
        "patches": {
            "min_size": candidate.resolution,
            "max_size": max(candidate.resolution, baseline_resolution),
            "multiple_of": multiple,
        },
    }
    if residuals == "cached":
        data["residuals"] = {"mode": "cached", "bank": "residual-bank"}
        data["offload"] = "drop"
    kept = {
        "gradient_checkpointing": candidate.checkpointing,
        "storage_dtype": "float8_e4m3fn" if candidate.fp8 else None,
        "group_offload": candidate.offload,
    }
    if any(kept.values()):
        data["kept_blocks"] = kept
    return BlockSkipPlan.from_dict(data)


def plan_for_budget(
    model: str | Path | dict | nn.Module,
    budget_bytes: int,
    *,
    min_quality: str = "fp8",
    max_skip_ratio: float = 0.5,
    resolutions: tuple[int, ...] | None = None,
    allow_offload: bool = True,
    reserve_bytes: int = GIB // 2,
    residuals: str = "online",
    frames: int | None = None,
    text_length: int | None = None,
    batch_size: int = 1,
    dtype: str = "bfloat16",
    lora_rank: int = 4,
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    optimizer: str = "adamw",
    device: str = "cuda",
    baseline: bool = True,
) -> PlanChoice:
    """Search for the lowest-risk plan whose estimated peak fits `budget_bytes` (see module docs).

    `resolutions` are training sides to try, best first (default: the preset's LoRA resolution,
    then its BlockSkip training resolution; 512 and 256 without a preset). The first is also the
    baseline's resolution and every plan's `patches.max_size`.
    """
    if min_quality not in QUALITY_LEVELS:
        raise ValueError(f"min_quality {min_quality!r} is not one of {', '.join(QUALITY_LEVELS)}")
    config, preset, label = resolve_model(model)
    class_name = config["_class_name"]
    family = family_of(class_name)
    num_blocks = get_layout(model_from_config(config)).num_blocks
    if resolutions is None:
        resolutions = (preset.resolution, preset.training_resolution) if preset else (512, 256)
    resolutions = tuple(sorted(set(resolutions), reverse=True))
    defaults = step_defaults(class_name, preset)
    setup = TrainingSetup(lora_rank=lora_rank, lora_targets=tuple(lora_targets), optimizer=optimizer)
    torch_dtype = DTYPES[dtype]

    lossless = min_quality == "lossless"
    ratios = [0.0] if lossless else _ratios(class_name, num_blocks, max_skip_ratio)
    precisions = [False] if min_quality != "fp8" else [False, True]
    sides = resolutions[:1] if lossless else resolutions
    speeds = [(False, False), (True, False)] + ([(True, True)] if allow_offload else [])

    def price(candidate: Candidate, resident_only: bool = False) -> StepEstimate:
        plan = _plan_for(candidate, class_name, num_blocks, resolutions[0], family.pixels_per_token, residuals)
        shape = StepShape(candidate.resolution, candidate.resolution, text_length or defaults["text_length"], batch_size, frames or defaults["frames"])
        return estimate_step(config, plan, shape, setup, dtype=torch_dtype, device=device, residuals=residuals,
                             label="BlockSkip", resident_only=resident_only)

    def fits(estimate: StepEstimate) -> bool:
        return estimate.peak_bytes + reserve_bytes <= budget_bytes

    tried: list[tuple[Candidate, int | None, str]] = []
    smallest: tuple[int, Candidate] | None = None
    for ratio in ratios:
        for fp8 in precisions:
            # The most frugal variant at the lowest resolution bounds the whole quality level.
            bound = Candidate(ratio, sides[-1], fp8, *speeds[-1])
            resident = price(bound, resident_only=True)
            if not fits(resident):
                tried.append((bound, resident.peak_bytes, "over budget before any activation; skipping this level"))
                continue
            priced = {bound: price(bound)}
            if smallest is None or priced[bound].peak_bytes < smallest[0]:
                smallest = (priced[bound].peak_bytes, bound)
            if not fits(priced[bound]):
                tried.append((bound, priced[bound].peak_bytes, "over budget; skipping this level"))
                continue
            for side in sides:
                for checkpointing, offload in speeds:
                    candidate = Candidate(ratio, side, fp8, checkpointing, offload)
                    if candidate not in priced:
                        priced[candidate] = price(candidate)
                    estimate = priced[candidate]
                    if not fits(estimate):
                        tried.append((candidate, estimate.peak_bytes, "over budget"))
                        continue
                    tried.append((candidate, estimate.peak_bytes, "fits"))
                    plan = _plan_for(candidate, class_name, num_blocks, resolutions[0], family.pixels_per_token, residuals)
                    base = None
                    if baseline:
                        base_plan = BlockSkipPlan.from_dict({"patches": {"min_size": resolutions[0], "max_size": resolutions[0]}})
                        shape = StepShape(resolutions[0], resolutions[0], text_length or defaults["text_length"], batch_size, frames or defaults["frames"])
                        base = estimate_step(config, base_plan, shape, setup, dtype=torch_dtype, device=device, residuals="online", label="LoRA baseline")
                    return PlanChoice(plan, candidate, estimate, base, budget_bytes, reserve_bytes, tried, label)
    least = f"{format_bytes(smallest[0])} ({smallest[1].describe()})" if smallest else "nothing was priced"
    raise NoPlanFitsError(
        f"no plan for {label} fits {format_bytes(budget_bytes)} with {format_bytes(reserve_bytes)} reserved "
        f"(min_quality {min_quality}, max_skip_ratio {max_skip_ratio}, offload {'allowed' if allow_offload else 'off'}); "
        f"the smallest estimate was {least}"
    )
