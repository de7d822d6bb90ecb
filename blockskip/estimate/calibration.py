"""Check the estimator against a real run: the same training step on real tensors, measured.

`measure_step` builds the model from its config with real (random) weights, prepares it exactly
as the estimator does (`blockskip.training.training_step`), and measures one training step, by one of:

- `"storages"`: `blockskip.estimate.memory.measure_peak_memory` — counted tensor storages on CPU,
  `torch.cuda.max_memory_allocated` on CUDA;
- `"allocator"` (CPU): the CPU allocator's own allocation and free events, recorded by
  `torch.profiler` from before the model is built, so that frees of tensors made before the step
  (fp8 weights recast every layer call) are seen too. `measure_peak_memory` keys its count on
  tensor objects and misses those frees and C++-held storages; with fp8 storage it is off by
  10–20%, the allocator is not.

`calibrate` runs the estimator on the same configuration and reports both.

Peak = resident bytes (weights and LoRA in the module tree, optimizer state, counted once per
storage) + the step's measured peak increase. The estimator reports the same sum.

Example:
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 2,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> result = calibrate(config, {"skip": {"leading": 1, "trailing": 1}}, resolution=64, text_length=8)
    >>> abs(result.error) < 0.10
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..families.presets import resolve_model
from ..families.step_inputs import StepShape, training_inputs
from ..skipping.plan import BlockSkipPlan
from ..training.training_step import TrainingSetup, make_optimizer, prepare_model, run_step
from .memory import measure_peak_memory
from .step import DTYPES, coerce_plan, estimate_step


@dataclass
class MeasuredStep:
    resident_bytes: int
    increase_bytes: int

    @property
    def peak_bytes(self) -> int:
        return self.resident_bytes + self.increase_bytes


@dataclass
class Calibration:
    label: str
    device: str
    measured: MeasuredStep
    estimated_peak: int
    estimated_resident: int

    @property
    def error(self) -> float:
        """Relative error of the estimated peak against the measured one."""
        return self.estimated_peak / self.measured.peak_bytes - 1

    @property
    def increase_error(self) -> float:
        """Relative error on the step's own bytes (peak minus resident)."""
        estimated = self.estimated_peak - self.estimated_resident
        return estimated / max(1, self.measured.increase_bytes) - 1


def resident_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, device: str = "cpu") -> int:
    """Bytes of the distinct storages of the module tree and the optimizer state on `device`."""
    seen: dict[int, int] = {}
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]
    for tensor in tensors:
        if tensor.device.type == torch.device(device).type:
            storage = tensor.untyped_storage()
            seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


def build_real_model(config: dict[str, Any], dtype: torch.dtype, seed: int = 0, device: str | torch.device = "cpu") -> nn.Module:
    """The config's diffusers model with seeded random weights, in `dtype` (fp32-pinned modules kept).

    `device` is where the weights are made and initialised: a full-size model is built on the GPU
    directly rather than initialised on the CPU and copied.
    """
    import diffusers

    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(diffusers, config["_class_name"]).from_config(config)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, module in model.named_modules():
        if keep and any(part in keep for part in name.split(".")):
            continue
        for tensor_name, parameter in module.named_parameters(recurse=False):
            if parameter.dtype == torch.float32:
                parameter.data = parameter.data.to(dtype)
        for tensor_name, buffer in module.named_buffers(recurse=False):
            if buffer.dtype == torch.float32:
                module._buffers[tensor_name] = buffer.to(dtype)
    return model


def measure_step(
    config: dict[str, Any],
    plan: BlockSkipPlan,
    shape: StepShape,
    setup: TrainingSetup,
    *,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    method: str = "storages",
) -> MeasuredStep:
    """Run and measure one real training step (see module docs)."""
    if method not in ("storages", "allocator") or (method == "allocator" and device != "cpu"):
        raise ValueError(f"method {method!r} on {device}: use 'storages', or 'allocator' on the CPU")

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        torch.manual_seed(seed)
        inputs, target = training_inputs(model, shape, dtype)
        if device != "cpu":
            inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
            target = target.to(device)
        run_step(model, inputs, target, optimizer)

    def build() -> tuple[nn.Module, torch.optim.Optimizer, int]:
        model = build_real_model(config, dtype, seed).to(device)
        prepare_model(model, plan, setup)
        optimizer = make_optimizer(model, setup)
        return model, optimizer, resident_bytes(model, optimizer, device)

    if method == "storages":
        model, optimizer, resident = build()
        with measure_peak_memory(device) as usage:
            step(model, optimizer)
        return MeasuredStep(resident, usage.peak_increase_bytes)
    return MeasuredStep(*_allocator_measurement(build, step))


def _allocator_measurement(build, step) -> tuple[int, int]:
    """(resident, peak increase) from the CPU allocator's events around one step."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        model, optimizer, resident = build()
        with record_function("blockskip_step"):
            step(model, optimizer)
    events = profiler.profiler.kineto_results.events()
    marker = next(event for event in events if event.name() == "blockskip_step")
    start, stop = marker.start_ns(), marker.start_ns() + marker.duration_ns()
    live, at_start, peak = 0, None, 0
    for time_ns, size in sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]"):
        if time_ns >= start and at_start is None:
            at_start = live
        live += size
        if start <= time_ns <= stop:
            peak = max(peak, live)
    return resident, peak - (at_start or 0)


def calibrate(
    model: str | dict | nn.Module,
    plan: BlockSkipPlan | dict | None = None,
    *,
    resolution: int = 64,
    frames: int | None = None,
    text_length: int = 8,
    batch_size: int = 1,
    dtype: str = "float32",
    device: str = "cpu",
    setup: TrainingSetup | None = None,
    label: str | None = None,
    method: str = "storages",
) -> Calibration:
    """Estimate and measure the same step; `Calibration.error` is the relative peak error."""
    config, _, name = resolve_model(model)
    plan = coerce_plan(plan)
    setup = setup or TrainingSetup()
    shape = StepShape(resolution, resolution, text_length, batch_size, frames)
    torch_dtype = DTYPES[dtype]
    measured = measure_step(config, plan, shape, setup, dtype=torch_dtype, device=device, method=method)
    estimate = estimate_step(config, plan, shape, setup, dtype=torch_dtype, device=device)
    resident = sum(estimate.resident_bytes.values())
    return Calibration(label or name, device, measured, estimate.peak_bytes, resident)
