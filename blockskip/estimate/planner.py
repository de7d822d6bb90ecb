"""Find the plan that fits a memory budget: by default the fastest, or the smallest, or the lowest-risk.

`plan_for_budget(model, budget_bytes, gpu=...)` searches the skip ratio (from the model's
selection table, `blockskip.skipping.skip_table`), the training resolution, fp8 storage of the
kept blocks' weights, gradient checkpointing and group offload. Each candidate is priced with
`estimate_step` (peak memory) and `step_time` (modelled seconds per step on the GPU profile).

`min_quality` and `max_skip_ratio` say what the user accepts: `"lossless"` allows only
checkpointing and offload (training computes what plain LoRA computes), `"bf16"` adds skipping and
lower resolutions, `"fp8"` (the default) adds fp8 weight storage. Among what they allow, `prefer`:

- `"speed"` (default): the fitting candidate with the least modelled s/step. Per skip ratio and
  resolution the variants are priced fastest first (no trade, fp8, checkpointing, fp8 and
  checkpointing, then offload), and the first that fits stands for that pair; so offload is
  chosen only where nothing faster fits, or where it is faster anyway.
- `"memory"`: the fitting candidate with the smallest peak.
- `"quality"`: the first fit in order of quality risk — lower skip ratio, the model's precision
  before fp8, higher resolution, then no trade, checkpointing, offload.

A quality level (skip ratio and precision) is first bounded cheaply: if the bytes that stay
resident between steps already exceed the budget, the level is skipped without pricing. A plan fits
when its estimated peak plus `reserve_bytes` (CUDA context and allocator slack, 0.5 GiB by default)
is at most the budget; the budget defaults to the GPU profile's memory.

Example:
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> choice = plan_for_budget(config, 650_000, resolutions=(64, 32), text_length=8, reserve_bytes=0,
    ...     dtype="float32", min_quality="bf16", allow_offload=False, baseline=False, prefer="quality")
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
from .gpus import GpuProfile, get_gpu
from .memory import format_bytes
from .report import StepEstimate
from .step import DTYPES, estimate_step
from .step_time import format_seconds, step_time
from .training_memory import step_defaults

QUALITY_LEVELS = ("lossless", "bf16", "fp8")
PREFERENCES = ("speed", "memory", "quality")
TIMING_GPU = "rtx4090-24gb"  # prices s/step when the caller names a budget but no GPU
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
class Priced:
    """One candidate as the search saw it: its peak and modelled s/step (None where not priced)."""

    candidate: Candidate
    peak_bytes: int | None
    seconds: float | None
    verdict: str


@dataclass
class PlanChoice:
    """The chosen plan, its estimate, the baseline's, and every candidate priced on the way."""

    plan: BlockSkipPlan
    candidate: Candidate
    estimate: StepEstimate
    baseline: StepEstimate | None
    budget_bytes: int
    reserve_bytes: int
    tried: list[Priced] = field(default_factory=list)
    model: str = ""
    gpu: str = TIMING_GPU
    prefer: str = "speed"

    @property
    def ranking(self) -> list[Priced]:
        """The candidates that fit, best first by the preference."""
        fitting = [entry for entry in self.tried if entry.verdict == "fits"]
        if self.prefer == "memory":
            return sorted(fitting, key=lambda entry: entry.peak_bytes)
        if self.prefer == "speed":
            return sorted(fitting, key=lambda entry: entry.seconds)
        return fitting

    def explain(self, top: int = 5) -> str:
        """The search in order, the best fitting candidates with memory and s/step, then the choice."""
        lines = [f"budget {format_bytes(self.budget_bytes)} (minus {format_bytes(self.reserve_bytes)} reserve for the CUDA context); "
                 f"s/step modelled on {self.gpu}, uncalibrated"]
        width = max(len(entry.candidate.describe()) for entry in self.tried)
        for entry in self.tried:
            price = format_bytes(entry.peak_bytes) if entry.peak_bytes is not None else "not priced"
            seconds = format_seconds(entry.seconds) if entry.seconds is not None else ""
            lines.append(f"  {entry.candidate.describe():<{width}} {price:>10} {seconds:>9}  {entry.verdict}")
        ranking = self.ranking
        if len(ranking) > 1:
            lines.append(f"best {min(top, len(ranking))} that fit, by {self.prefer}:")
            lines.extend(f"  {entry.candidate.describe():<{width}} {format_bytes(entry.peak_bytes):>10} {format_seconds(entry.seconds):>9}"
                         for entry in ranking[:top])
        reason = {"speed": "the fastest candidate that fits", "memory": "the smallest candidate that fits",
                  "quality": "the lowest-risk candidate that fits"}[self.prefer]
        lines.append(f"chose: {self.candidate.describe()} — {reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "gpu": self.gpu,
            "prefer": self.prefer,
            "plan": self.plan.to_dict(),
            "budget_bytes": self.budget_bytes,
            "reserve_bytes": self.reserve_bytes,
            "estimate": self.estimate.to_dict(),
            "step_time": step_time(self.estimate, self.gpu).to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "baseline_step_time": step_time(self.baseline, self.gpu).to_dict() if self.baseline else None,
            "tried": [
                {"candidate": entry.candidate.__dict__, "peak_bytes": entry.peak_bytes, "seconds": entry.seconds, "verdict": entry.verdict}
                for entry in self.tried
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
    budget_bytes: int | None = None,
    *,
    gpu: str | GpuProfile | None = None,
    prefer: str = "speed",
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
    """Search for the plan that fits `budget_bytes` (default: `gpu`'s memory) by `prefer` (see module docs).

    `resolutions` are training sides to try, best first (default: the preset's LoRA resolution,
    then its BlockSkip training resolution; 512 and 256 without a preset). The first is also the
    baseline's resolution and every plan's `patches.max_size`.
    """
    if min_quality not in QUALITY_LEVELS:
        raise ValueError(f"min_quality {min_quality!r} is not one of {', '.join(QUALITY_LEVELS)}")
    if prefer not in PREFERENCES:
        raise ValueError(f"prefer {prefer!r} is not one of {', '.join(PREFERENCES)}")
    profile = get_gpu(gpu) if isinstance(gpu, str) else gpu
    if budget_bytes is None:
        if profile is None:
            raise ValueError("give a memory budget or a GPU profile (its memory is the budget)")
        budget_bytes = profile.memory_bytes
    timing = profile or get_gpu(TIMING_GPU)
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

    def shape(side: int) -> StepShape:
        return StepShape(side, side, text_length or defaults["text_length"], batch_size, frames or defaults["frames"])

    def plan_of(candidate: Candidate) -> BlockSkipPlan:
        return _plan_for(candidate, class_name, num_blocks, resolutions[0], family.pixels_per_token, residuals)

    def price(candidate: Candidate, resident_only: bool = False) -> StepEstimate:
        return estimate_step(config, plan_of(candidate), shape(candidate.resolution), setup, dtype=torch_dtype, device=device,
                             residuals=residuals, label="chosen plan", resident_only=resident_only)

    lossless = min_quality == "lossless"
    search = _Search(price, lambda estimate: estimate.peak_bytes + reserve_bytes <= budget_bytes, timing)
    search.ratios = [0.0] if lossless else _ratios(class_name, num_blocks, max_skip_ratio)
    search.precisions = [False] if min_quality != "fp8" else [False, True]
    search.sides = resolutions[:1] if lossless else resolutions
    search.speeds = [(False, False), (True, False)] + ([(True, True)] if allow_offload else [])
    chosen = search.first_fit() if prefer == "quality" else search.best(prefer)
    if chosen is None:
        least = f"{format_bytes(search.smallest[0])} ({search.smallest[1].describe()})" if search.smallest else "nothing was priced"
        raise NoPlanFitsError(
            f"no plan for {label} fits {format_bytes(budget_bytes)} with {format_bytes(reserve_bytes)} reserved "
            f"(min_quality {min_quality}, max_skip_ratio {max_skip_ratio}, offload {'allowed' if allow_offload else 'off'}); "
            f"the smallest estimate was {least}"
        )
    base = None
    if baseline:
        base_plan = BlockSkipPlan.from_dict({"patches": {"min_size": resolutions[0], "max_size": resolutions[0]}})
        base = estimate_step(config, base_plan, shape(resolutions[0]), setup, dtype=torch_dtype, device=device,
                             residuals="online", label="LoRA baseline")
    return PlanChoice(plan_of(chosen), chosen, search.priced[chosen], base, budget_bytes, reserve_bytes, search.tried,
                      label, timing.key, prefer)


class _Search:
    """Prices candidates once each and logs every one it looks at, in order."""

    def __init__(self, price, fits, gpu: GpuProfile):
        self.price, self.fits, self.gpu = price, fits, gpu
        self.ratios: list[float] = []
        self.precisions: list[bool] = []
        self.sides: tuple[int, ...] = ()
        self.speeds: list[tuple[bool, bool]] = []
        self.priced: dict[Candidate, StepEstimate] = {}
        self.tried: list[Priced] = []
        self.smallest: tuple[int, Candidate] | None = None
        self._levels: dict[tuple[float, bool], bool] = {}

    def level_may_fit(self, ratio: float, fp8: bool) -> bool:
        """False when the level's most frugal variant is over budget before any activation."""
        if (ratio, fp8) not in self._levels:
            bound = Candidate(ratio, self.sides[-1], fp8, *self.speeds[-1])
            resident = self.price(bound, resident_only=True)
            self._levels[ratio, fp8] = self.fits(resident)
            if not self._levels[ratio, fp8]:
                self.tried.append(Priced(bound, resident.peak_bytes, None, "over budget before any activation; skipping this level"))
        return self._levels[ratio, fp8]

    def fitting(self, candidate: Candidate) -> bool:
        if candidate not in self.priced:
            self.priced[candidate] = self.price(candidate)
        estimate = self.priced[candidate]
        if self.smallest is None or estimate.peak_bytes < self.smallest[0]:
            self.smallest = (estimate.peak_bytes, candidate)
        fits = self.fits(estimate)
        self.tried.append(Priced(candidate, estimate.peak_bytes, step_time(estimate, self.gpu).seconds, "fits" if fits else "over budget"))
        return fits

    def first_fit(self) -> Candidate | None:
        """The lowest-risk candidate that fits (the quality order of the module docs)."""
        for ratio in self.ratios:
            for fp8 in self.precisions:
                if not self.level_may_fit(ratio, fp8):
                    continue
                for side in self.sides:
                    for checkpointing, offload in self.speeds:
                        candidate = Candidate(ratio, side, fp8, checkpointing, offload)
                        if self.fitting(candidate):
                            return candidate
        return None

    def best(self, prefer: str) -> Candidate | None:
        """Per (ratio, side), the first fit fastest-first (speed) or most frugal first (memory); then the best of those."""
        variants = [(fp8, checkpointing, offload) for checkpointing, offload in self.speeds for fp8 in self.precisions]
        if prefer == "memory":
            variants.reverse()
        found: list[Candidate] = []
        for ratio in self.ratios:
            for side in self.sides:
                for fp8, checkpointing, offload in variants:
                    if not self.level_may_fit(ratio, fp8):
                        continue
                    candidate = Candidate(ratio, side, fp8, checkpointing, offload)
                    if self.fitting(candidate):
                        found.append(candidate)
                        break
        if not found:
            return None
        if prefer == "memory":
            return min(found, key=lambda candidate: self.priced[candidate].peak_bytes)
        return min(found, key=lambda candidate: step_time(self.priced[candidate], self.gpu).seconds)
