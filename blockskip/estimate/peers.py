"""What a user would pick instead of BlockSkip, priced beside it on the same fake-tensor steps.

`compare_strategies(model, gpu)` runs the full-resolution LoRA step with gradient checkpointing
once (the step the offloading trainers run) and prices the peers from it by moving weight bytes:

- **block swap of N blocks** (kohya sd-scripts / musubi-tuner `--blocks_to_swap`): N blocks'
  weights live on the CPU; each comes in for its forward and again for its backward (the
  recompute), one block ahead of use, over a two-block buffer.
- **group offload** (diffusers `enable_group_offload`, `block_level` one block per group, or
  `leaf_level`): every block's weights on the CPU, prefetched one group ahead on a side stream.
- **layer offload by fraction** (OneTrainer `layer_offload_fraction`): that fraction of the blocks'
  Linear weights on the CPU, streamed layer by layer like leaf-level group offload.
- **nf4 base weights** (bitsandbytes `Linear4bit` through diffusers' quantization config): the
  blocks' Linear weights at 4.127 bits (nf4 with double-quantized absmax), priced by bytes;
  dequantization time is not modelled.

Three forward-only rows follow: a zeroth-order LoRA step (MeZO-style, `blockskip.zeroth_order`, two
forwards) alone, with fp8 weight storage, and with a 30% online skip, at the peers' resolution (ZO-high trains at full
resolution). They are priced per step like the rest, and a zeroth-order run needs far more steps.

fp8 base weights, the zeroth-order steps and the BlockSkip plans are not priced by bytes: each runs its own fake step
(`estimate_step`), with blockskip's fp8 storage of the kept blocks standing in for the trainers'
fp8 base (`--fp8_base`). Times come from `blockskip.estimate.step_time` on the chosen profile.

Example:
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> rows = compare_strategies(config, "rtx4090-24gb", resolution=64, training_resolution=32,
    ...     text_length=8, dtype="float32", swap_counts=(4,))
    >>> [row.name for row in rows][:3]
    ['LoRA baseline', 'gradient checkpointing', 'block swap 4']
    >>> rows[2].peak_bytes < rows[1].peak_bytes, rows[2].traffic_bytes > 0
    (True, True)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..families.layouts import get_layout
from ..families.presets import resolve_model
from ..families.step_inputs import StepShape
from ..skipping.inspection import model_from_config
from ..skipping.plan import BlockSkipPlan
from ..training.training_step import TrainingSetup
from .emulation import tensor_bytes
from .gpus import GpuProfile, get_gpu
from .memory import format_bytes
from .report import StepEstimate
from .step import DTYPES, estimate_step
from .step_time import StepTime, format_seconds, step_time
from .training_memory import step_defaults
from .zeroth_order_step import ZerothOrderPricing

NF4_BITS = 4.127  # 4-bit codes + an fp8 absmax per 64 weights + an fp32 scale per 256 absmaxes
BLOCKSKIP_PLANS = (
    ("BlockSkip 30%, online", {"skip": {"ratio": 0.3}}),
    ("BlockSkip 50%, online", {"skip": {"ratio": 0.5}}),
    ("BlockSkip 30%, cached", {"skip": {"ratio": 0.3}, "residuals": {"mode": "cached", "bank": "bank"}, "offload": "drop"}),
    ("BlockSkip 50%, cached", {"skip": {"ratio": 0.5}, "residuals": {"mode": "cached", "bank": "bank"}, "offload": "drop"}),
    ("BlockSkip 50%, cached, fp8, checkpointing", {"skip": {"ratio": 0.5}, "residuals": {"mode": "cached", "bank": "bank"},
                                                 "offload": "drop", "kept_blocks": {"gradient_checkpointing": True,
                                                                                    "storage_dtype": "float8_e4m3fn"}}),
)

ZEROTH_ORDER_ROWS = (
    ("zeroth-order LoRA", {}),
    ("zeroth-order LoRA, fp8 weights", {"kept_blocks": {"storage_dtype": "float8_e4m3fn"}}),
    ("zeroth-order LoRA, BlockSkip 30% online", {"skip": {"ratio": 0.3}}),
)


@dataclass
class Strategy:
    """One way to train: its peak, its host → device bytes per step, its modelled time, and how it was priced."""

    name: str
    kind: str  # "baseline", "peer", "zeroth-order" or "blockskip"
    group: str  # settings of one strategy share a group (every block-swap count is "block swap")
    setting: str  # what tells it apart inside its group ("42 blocks", "leaf level", "50%, fp8")
    resolution: int
    peak_bytes: int
    traffic_bytes: int
    time: StepTime
    priced: str  # "fake step" or "bytes moved from the checkpointed baseline"

    @property
    def seconds(self) -> float:
        return self.time.seconds

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": self.time.to_dict(), "seconds": self.seconds}


@dataclass(frozen=True)
class _Blocks:
    """Weight bytes of the transformer blocks, as the trainers move them."""

    sizes: tuple[int, ...]  # per block, in execution order
    linear_bytes: int  # the blocks' Linear weights (what nf4 quantizes)
    largest_layer: int

    @classmethod
    def of(cls, model: nn.Module, dtype: torch.dtype) -> "_Blocks":
        blocks = [block for block_list in get_layout(model) for block in block_list.blocks]
        linears = [module for block in blocks for module in block.modules() if isinstance(module, nn.Linear)]
        return cls(tuple(tensor_bytes(block, dtype) for block in blocks), sum(tensor_bytes(layer, dtype) for layer in linears),
                   max(tensor_bytes(layer, dtype) for layer in linears))


def _streamed(base: StepEstimate, moved: int, copies: int, buffer: int) -> StepEstimate:
    """`base` with `moved` weight bytes off the device: `buffer` bytes of them in flight, two copies a block a step."""
    if copies == 0:
        return base
    per_copy = moved // copies
    return replace(
        base,
        peak_bytes=base.peak_bytes - moved + buffer,
        traffic={"offload": 2 * moved},
        transfers={"offload": 2 * copies},
        streamed_flops=0,
        plan={**base.plan, "kept_blocks": {"gradient_checkpointing": True}},
        notes=[*base.notes, f"{format_bytes(per_copy)} per copy"],
    )


def compare_strategies(
    model: str | Path | dict | nn.Module,
    gpu: str | GpuProfile,
    *,
    resolution: int | None = None,
    training_resolution: int | None = None,
    text_length: int | None = None,
    frames: int | None = None,
    batch_size: int = 1,
    dtype: str = "bfloat16",
    swap_counts: tuple[int, ...] | None = None,
    offload_fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
    blockskip_plans: tuple[tuple[str, dict], ...] = BLOCKSKIP_PLANS,
) -> list[Strategy]:
    """Price the baseline, the peers and `blockskip_plans` for `model` on `gpu` (see module docs).

    The peers train at `resolution` (default: the preset's LoRA resolution, else 512); BlockSkip
    plans train at `training_resolution` (default: the preset's BlockSkip resolution, else 256).
    `swap_counts` default to a quarter, half, three quarters and all but two of the blocks.
    """
    profile = get_gpu(gpu) if isinstance(gpu, str) else gpu
    config, preset, _ = resolve_model(model)
    defaults = step_defaults(config["_class_name"], preset)
    resolution = resolution or (preset.resolution if preset else 512)
    training_resolution = training_resolution or (preset.training_resolution if preset else 256)
    torch_dtype = DTYPES[dtype]
    setup = TrainingSetup()

    def fake_step(plan: dict, side: int, zeroth_order: ZerothOrderPricing | None = None) -> StepEstimate:
        shape = StepShape(side, side, text_length or defaults["text_length"], batch_size, frames or defaults["frames"])
        return estimate_step(config, BlockSkipPlan.from_dict({**plan, "patches": {"min_size": side, "max_size": side}}), shape,
                             setup, dtype=torch_dtype, zeroth_order=zeroth_order)

    def row(name: str, kind: str, estimate: StepEstimate, side: int, priced: str = "fake step", group: str | None = None,
            setting: str = "") -> Strategy:
        return Strategy(name, kind, group or name, setting, side, estimate.peak_bytes, sum(estimate.traffic.values()),
                        step_time(estimate, profile), priced)

    blocks = _Blocks.of(model_from_config(config), torch_dtype)
    count = len(blocks.sizes)
    plain = fake_step({}, resolution)
    checkpointed = fake_step({"kept_blocks": {"gradient_checkpointing": True}}, resolution)
    rows = [row("LoRA baseline", "baseline", plain, resolution), row("gradient checkpointing", "peer", checkpointed, resolution)]
    by_bytes = "bytes moved from the checkpointed baseline"
    largest_block = max(blocks.sizes)
    swap_counts = swap_counts or tuple(sorted({count // 4, count // 2, 3 * count // 4, count - 2} - {0}))
    for swapped in swap_counts:
        sizes = blocks.sizes[-swapped:]  # the trainers swap from the end of the stack
        rows.append(row(f"block swap {swapped}", "peer", _streamed(checkpointed, sum(sizes), swapped, 2 * max(sizes)), resolution, by_bytes,
                        "block swap (kohya, musubi)", f"{swapped} blocks"))
    every = sum(blocks.sizes)
    rows.append(row("group offload, block level", "peer", _streamed(checkpointed, every, count, 2 * largest_block), resolution, by_bytes,
                    "group offload (diffusers)", "block level"))
    layers = max(1, blocks.linear_bytes // max(1, blocks.largest_layer))
    leaf = _streamed(checkpointed, blocks.linear_bytes, layers, 2 * blocks.largest_layer)
    rows.append(row("group offload, leaf level", "peer", leaf, resolution, by_bytes, "group offload (diffusers)", "leaf level"))
    for fraction in offload_fractions:
        moved = int(blocks.linear_bytes * fraction)
        streamed = _streamed(checkpointed, moved, max(1, round(layers * fraction)), 2 * blocks.largest_layer)
        rows.append(row(f"layer offload {fraction:.0%}", "peer", streamed, resolution, by_bytes, "layer offload (OneTrainer)", f"{fraction:.0%}"))
    fp8 = fake_step({"kept_blocks": {"gradient_checkpointing": True, "storage_dtype": "float8_e4m3fn"}}, resolution)
    rows.append(row("fp8 base weights, checkpointing", "peer", fp8, resolution))
    saved = int(blocks.linear_bytes * (1 - NF4_BITS / (8 * torch_dtype.itemsize)))
    nf4 = replace(checkpointed, peak_bytes=checkpointed.peak_bytes - saved)
    rows.append(row("nf4 base weights, checkpointing", "peer", nf4, resolution, "bytes: blocks' Linear weights at 4.127 bits"))
    for name, plan in ZEROTH_ORDER_ROWS:
        setting = name.removeprefix("zeroth-order LoRA").strip(", ") or "no skip"
        rows.append(row(name, "zeroth-order", fake_step(plan, resolution, ZerothOrderPricing()), resolution,
                        group="zeroth-order LoRA (blockskip)", setting=setting))
    for name, plan in blockskip_plans:
        mode = "cached" if "cached" in name else "online"
        setting = name.removeprefix("BlockSkip ").replace(f", {mode}", "")
        rows.append(row(name, "blockskip", fake_step(plan, training_resolution), training_resolution, group=f"BlockSkip, {mode}",
                        setting=setting))
    return rows


def fastest_per_budget(rows: list[Strategy], budgets_bytes: list[int], reserve_bytes: int = 1024**3 // 2) -> dict[str, list[Strategy | None]]:
    """Per strategy group, the fastest setting that fits each budget (None where none does)."""
    table: dict[str, list[Strategy | None]] = {}
    for row in rows:
        table.setdefault(row.group, [None] * len(budgets_bytes))
    for column, budget in enumerate(budgets_bytes):
        for group in table:
            fitting = [row for row in rows if row.group == group and row.peak_bytes + reserve_bytes <= budget]
            table[group][column] = min(fitting, key=lambda row: row.seconds) if fitting else None
    return table


def budget_markdown(rows: list[Strategy], budgets_gib: list[float], reserve_bytes: int = 1024**3 // 2) -> str:
    """`fastest_per_budget` as a Markdown table: setting, peak and s/step per budget."""
    table = fastest_per_budget(rows, [int(budget * 1024**3) for budget in budgets_gib], reserve_bytes)
    header = ["strategy", *(f"{budget:g} GiB" for budget in budgets_gib)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, cells in table.items():
        text = [f"{cell.setting + ': ' if cell.setting else ''}{format_bytes(cell.peak_bytes)}, {format_seconds(cell.seconds)}"
                if cell else "does not fit" for cell in cells]
        lines.append("| " + " | ".join([group, *text]) + " |")
    return "\n".join(lines)


def format_comparison(rows: list[Strategy], gpu: str | GpuProfile, reserve_bytes: int = 1024**3 // 2) -> str:
    """A table: each strategy's peak, copies per step, modelled s/step and ratio, and whether it fits `gpu`."""
    profile = get_gpu(gpu) if isinstance(gpu, str) else gpu
    baseline = next(row for row in rows if row.kind == "baseline")
    lines = [f"{'strategy':<44} {'side':>5} {'peak':>10} {'H2D/step':>10} {'s/step':>10} {'ratio':>6}  fits {profile.key}"]
    for row in rows:
        fits = "yes" if row.peak_bytes + reserve_bytes <= profile.memory_bytes else "no"
        lines.append(f"{row.name:<44} {row.resolution:>5} {format_bytes(row.peak_bytes):>10} {format_bytes(row.traffic_bytes):>10} "
                     f"{format_seconds(row.seconds):>10} {row.seconds / baseline.seconds:>6.2f}  {fits}")
    lines.append(f"s/step modelled on {profile.describe()}; efficiency {baseline.time.efficiency} (uncalibrated). "
                 f"Peaks are estimates; {format_bytes(reserve_bytes)} is reserved for the CUDA context.")
    if any(row.kind == "zeroth-order" for row in rows):
        lines.append("Zeroth-order rows are per step: a zeroth-order run needs many more steps than backpropagation.")
    return "\n".join(lines)
