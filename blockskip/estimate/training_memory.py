"""`estimate_training_memory`: a LoRA training step's peak memory and FLOPs at full size, without a GPU.

It resolves the model (a preset, a config, a folder or a model), picks the resolutions the plan
trains and its baseline runs at, and estimates both steps (`blockskip.estimate.step`), returning a
`TrainingEstimate` with the ratios.

Example:
    >>> from blockskip.estimate import estimate_training_memory
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> report = estimate_training_memory(config, {"skip": {"leading": 2, "trailing": 1}},
    ...     resolution=64, text_length=8, dtype="float32")
    >>> report.step.peak_bytes < report.baseline.peak_bytes, report.step.flops < report.baseline.flops
    (True, True)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..families.presets import ModelPreset, resolve_model
from ..families.step_inputs import StepShape, family_of
from ..skipping.plan import BlockSkipPlan, PatchSettings
from ..training.training_step import DEFAULT_LORA_TARGETS, TrainingSetup
from .gpus import get_gpu
from .report import TrainingEstimate
from .step import DTYPES, coerce_plan, estimate_step
from .zeroth_order_step import ZerothOrderPricing

_UNSET: Any = object()


def _side(resolution: int | tuple[int, int]) -> tuple[int, int]:
    return (resolution, resolution) if isinstance(resolution, int) else (int(resolution[0]), int(resolution[1]))


def step_defaults(class_name: str, preset: ModelPreset | None) -> dict[str, Any]:
    """Text length and frame count an estimate uses when the caller gives none."""
    family = family_of(class_name)
    frames = None
    if family.frames_per_latent:
        frames = preset.frames if preset and preset.frames else 1 + 4 * family.frames_per_latent
    return {"text_length": preset.text_length if preset else family.text_length, "frames": frames}


def with_kept_blocks(plan: BlockSkipPlan, **changes: Any) -> BlockSkipPlan:
    """`plan` with some `kept_blocks` fields changed (None values are left as they are)."""
    changes = {key: value for key, value in changes.items() if value is not _UNSET and value is not None}
    if "storage_dtype" in changes and changes["storage_dtype"] in ("none", "bfloat16"):
        changes["storage_dtype"] = None
    return replace(plan, kept_blocks=replace(plan.kept_blocks, **changes)) if changes else plan


def estimate_training_memory(
    model_or_config: str | Path | dict | nn.Module,
    plan: BlockSkipPlan | dict | str | Path | None = None,
    *,
    resolution: int | tuple[int, int] | None = None,
    frames: int | None = None,
    text_length: int | None = None,
    batch_size: int = 1,
    dtype: str | torch.dtype = "bfloat16",
    lora_rank: int = 4,
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
    lora_dtype: str | torch.dtype | None = None,
    optimizer: str = "adamw",
    gradient_checkpointing: bool | None = None,
    storage_dtype: str | None = _UNSET,
    group_offload: bool | None = None,
    residuals: str | None = None,
    device: str = "cuda",
    baseline: bool = True,
    baseline_resolution: int | tuple[int, int] | None = None,
    gpu: str | None = None,
    zeroth_order: ZerothOrderPricing | None = None,
) -> TrainingEstimate:
    """Estimate a LoRA training step's peak memory and FLOPs under `plan`, and the baseline's.

    `model_or_config`: a preset name (`"flux.1-dev"`, see `blockskip.families.presets`), a `config.json`
    or model folder, a config dict, or a diffusers model (its config is used; its weights are not).
    `resolution` defaults to the plan's `patches.min_size` (every crop is resized to it) and
    `baseline_resolution` to `patches.max_size`; a plan that leaves `patches` at its defaults takes
    the preset's resolutions instead (Sana: 512 and 1024). `gradient_checkpointing`, `storage_dtype` and
    `group_offload` override the plan's `kept_blocks`. `residuals="cached"` prices the paper's
    cached residuals (skipped blocks cost nothing). `device="cpu"` prices a CPU run (no weight
    streaming), for comparison with `measure_peak_memory`. The baseline is the same LoRA step
    with no skip and no trades. `gpu` (a key of `blockskip.estimate.gpus.GPUS`) adds modelled
    seconds per step (`blockskip.estimate.step_time`). `zeroth_order` prices the plan's step as a
    forward-only `ZerothOrderOptimizer` step (`blockskip.estimate.zeroth_order_step`); the
    baseline stays the backpropagation LoRA step.
    """
    if gpu is not None:
        get_gpu(gpu)  # an unknown name fails before minutes of pricing
    config, preset, label = resolve_model(model_or_config)
    class_name = config["_class_name"]
    plan = with_kept_blocks(
        coerce_plan(plan),
        gradient_checkpointing=gradient_checkpointing,
        storage_dtype=storage_dtype,
        group_offload=group_offload,
    )
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    setup = TrainingSetup(
        lora_rank=lora_rank,
        lora_targets=tuple(lora_targets),
        lora_dtype=DTYPES[lora_dtype] if isinstance(lora_dtype, str) else lora_dtype,
        optimizer=optimizer,
    )
    defaults = step_defaults(class_name, preset)
    text_length = text_length or defaults["text_length"]
    frames = frames or defaults["frames"]
    training_side, baseline_side = plan.patches.min_size, plan.patches.max_size
    if preset is not None and plan.patches == PatchSettings():  # no patches given: the preset's sides
        training_side, baseline_side = preset.training_resolution, preset.resolution
    height, width = _side(resolution or training_side)
    shape = StepShape(height, width, text_length, batch_size, frames)
    label_of_step = "BlockSkip, zeroth order" if zeroth_order else "BlockSkip"
    step = estimate_step(config, plan, shape, setup, dtype=torch_dtype, device=device, residuals=residuals, label=label_of_step,
                         zeroth_order=zeroth_order)
    base = None
    if baseline:
        base_height, base_width = _side(baseline_resolution or baseline_side)
        base_plan = BlockSkipPlan.from_dict({"patches": plan.to_dict()["patches"]})
        base = estimate_step(
            config,
            base_plan,
            StepShape(base_height, base_width, text_length, batch_size, frames),
            setup,
            dtype=torch_dtype,
            device=device,
            residuals="online",
            label="LoRA baseline",
        )
    return TrainingEstimate(model=label, parameters=step.model_parameters, step=step, baseline=base, gpu=gpu)
