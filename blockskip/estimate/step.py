"""One configuration's LoRA training step, run on fake tensors and counted.

`estimate_step(config, plan, shape, setup)` builds the model on the meta device, adds the LoRA,
gives everything fake tensors (`blockskip.estimate.fake`), applies the plan and its memory
trades, and runs one real training step — forward, fp32 loss, backward, optimizer step — while
`blockskip.estimate.accounting` counts live storages and FLOPs. What runs is the library's own
code (`blockskip.training.training_step`), so the estimate prices only what blockskip can do;
what fake CPU tensors cannot run is emulated (`blockskip.estimate.emulation`).

Numbers are `torch.cuda.max_memory_allocated`-style bytes: the CUDA context and allocator slack
(typically 0.3–1 GiB) come on top. The fake run uses CPU attention kernels (flash-style: output and
log-sum-exp saved), which match CUDA's flash/efficient attention in memory.

Example:
    >>> from blockskip.families.step_inputs import StepShape
    >>> from blockskip.training.training_step import TrainingSetup
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 1, "num_single_layers": 2,
    ...     "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 32,
    ...     "pooled_projection_dim": 16, "in_channels": 16, "axes_dims_rope": [4, 6, 6]}
    >>> plan = coerce_plan({"skip": {"leading": 1}})
    >>> row = estimate_step(config, plan, StepShape(64, 64, 8, 1), TrainingSetup(), dtype=torch.float32)
    >>> row.skip["leading"], row.peak_bytes > 0
    (1, True)
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..families.step_inputs import StepShape, check_shape, training_inputs
from ..skipping.inspection import model_from_config
from ..skipping.plan import BlockSkipPlan, ResidualSettings
from ..training.training_step import (
    TrainingSetup,
    attach_lora,
    finish_preparation,
    make_optimizer,
    run_step,
    trainable_parameters,
    without_group_offload,
)
from .accounting import CATEGORIES, FlopCounter, StorageLedger
from .emulation import Emulation, emulate_cached, emulate_group_offload, emulate_streaming, tensor_bytes, weight_casts
from .fake import fakeify
from .memory import format_bytes
from .report import StepEstimate
from .zeroth_order_step import ZerothOrderPricing, resident_state, run_forward_only_step, scale_traffic

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def coerce_plan(plan: BlockSkipPlan | dict | str | Path | None) -> BlockSkipPlan:
    """A plan from a plan, a dict, a path to a plan file, or None (the default plan)."""
    if plan is None:
        return BlockSkipPlan()
    if isinstance(plan, BlockSkipPlan):
        return plan
    if isinstance(plan, dict):
        return BlockSkipPlan.from_dict(plan)
    return BlockSkipPlan.load(plan)


def _register_model(ledger: StorageLedger, model: nn.Module, skip: set[int]) -> None:
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.untyped_storage()._cdata in skip:
            continue
        ledger.register(tensor, "lora_params" if tensor.requires_grad else "weights")


def _register_optimizer(ledger: StorageLedger, optimizer: torch.optim.Optimizer) -> None:
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                ledger.register(value, "optimizer_state")


def estimate_step(
    config: dict[str, Any],
    plan: BlockSkipPlan,
    shape: StepShape,
    setup: TrainingSetup,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cuda",
    residuals: str | None = None,
    label: str = "plan",
    resident_only: bool = False,
    zeroth_order: ZerothOrderPricing | None = None,
) -> StepEstimate:
    """Run one fake training step of `config` under `plan` and count it (see module docs).

    `resident_only=True` stops before the step: `peak_bytes` is then what stays on the device
    between steps (weights, LoRA, optimizer state), a lower bound the planner uses to skip
    candidates cheaply. `zeroth_order` prices a forward-only step of `ZerothOrderOptimizer` instead
    of backpropagation (`blockskip.estimate.zeroth_order_step`).
    """
    started = time.perf_counter()
    check_shape(config["_class_name"], shape)
    mode = residuals or plan.residuals.mode
    run_plan = plan
    if mode == "cached":  # the stand-ins do nothing; the Δ comes from the emulation
        run_plan = replace(plan, residuals=ResidualSettings(mode="none"), offload="drop")
    fake = FakeTensorMode()
    model = model_from_config(config)  # meta: LoRA is added here, then everything turns fake
    model_parameters = sum(parameter.numel() for parameter in model.parameters())
    ledger = StorageLedger("cpu", classify=weight_casts if plan.kept_blocks.storage_dtype else None)
    emulation = Emulation(ledger)
    notes: list[str] = []
    handle = attach_lora(model, run_plan, setup)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    fakeify(model, dtype, fake)
    for original in handle.originals.values():
        fakeify(original, dtype, fake, keep_in_fp32=keep)
    with fake:
        finish_preparation(model, setup, without_group_offload(run_plan))
        optimizer = None if zeroth_order else make_optimizer(model, setup, foreach=device == "cuda")
        offloaded: set[int] = set()
        if plan.kept_blocks.group_offload:
            offloaded = emulate_group_offload(emulation, model)
        if mode == "online" and plan.offload == "cpu" and device == "cuda" and handle.originals:
            emulate_streaming(emulation, handle, dtype)
        if mode == "cached" and handle.spans:
            emulate_cached(emulation, model, handle)
            notes.append("cached residuals emulated: skipped blocks cost nothing; each span's stored tensor comes in per step")
        _register_model(ledger, model, offloaded)
        if plan.offload == "none" and mode != "cached":
            for original in handle.originals.values():
                for tensor in original.parameters():
                    ledger.register(tensor, "weights")
        optimizer_tensors = []  # the zeroth-order optimizer's, alive through the step
        if zeroth_order:
            optimizer_tensors = resident_state(trainable_parameters(model), zeroth_order, ledger)
            notes.append(zeroth_order.describe())
        else:
            _register_optimizer(ledger, optimizer)
        resident = {name: ledger.live_by_category[name] for name in ("weights", "lora_params", "optimizer_state")}
        host = 0 if plan.offload == "none" or mode == "cached" else sum(tensor_bytes(o) for o in handle.originals.values())
        host += sum(
            tensor.numel() * tensor.element_size()
            for tensor in [*model.parameters(), *model.buffers()]
            if tensor.untyped_storage()._cdata in offloaded
        )
        if resident_only:
            emulation.remove()
            breakdown = {name: ledger.live_by_category.get(name, 0) for name in CATEGORIES}
            return StepEstimate(label, plan.to_dict(), shape.height, shape.width, shape.frames, shape.text_length,
                                shape.batch_size, str(dtype).removeprefix("torch."), mode, device, ledger.live_bytes,
                                breakdown, resident, 0, 0, host, model_parameters, notes=["resident bytes only"])
        for parameter in [] if zeroth_order else trainable_parameters(model):
            emulation.handles.append(
                parameter.register_post_accumulate_grad_hook(lambda p: ledger.retag(p.grad, "lora_grads"))
            )
        flops = FlopCounter()
        marks: dict[str, int] = {}
        streamed = _count_streamed_flops(emulation, handle, flops) if mode == "online" else [0]

        def on_phase(phase: str) -> None:
            marks[phase] = flops.total
            ledger.category = "optimizer_state" if phase == "optimizer" else "activations"

        try:
            with flops, ledger:
                inputs, target = training_inputs(model, shape, dtype)
                if zeroth_order:
                    run_forward_only_step(model, inputs, target, trainable_parameters(model), zeroth_order, on_phase)
                else:
                    run_step(model, inputs, target, optimizer, on_phase=on_phase)
                del inputs, target
        finally:
            emulation.remove()
            del optimizer_tensors
    breakdown = ledger.breakdown()
    peak = ledger.peak_bytes
    if emulation.extra_peak:
        breakdown["weights"] += emulation.extra_peak
        peak += emulation.extra_peak
        notes.append(f"group offload: {format_bytes(emulation.extra_peak)} for the layer prefetched on the side stream")
    forwards = zeroth_order.forwards if zeroth_order else 1
    forward_flops = marks.get("backward", 0)
    return StepEstimate(
        label=label,
        plan=plan.to_dict(),
        height=shape.height,
        width=shape.width,
        frames=shape.frames,
        text_length=shape.text_length,
        batch_size=shape.batch_size,
        dtype=str(dtype).removeprefix("torch."),
        residuals=mode,
        device=device,
        peak_bytes=peak,
        breakdown=breakdown,
        resident_bytes=resident,
        forward_flops=forwards * forward_flops,
        backward_flops=marks.get("optimizer", 0) - forward_flops,
        host_bytes=host,
        model_parameters=model_parameters,
        skip={"leading": handle.split.leading, "trailing": handle.split.trailing, "source": handle.split.source},
        seconds=time.perf_counter() - started,
        notes=notes,
        streamed_flops=forwards * streamed[0],
        traffic=scale_traffic(dict(emulation.traffic), forwards),
        transfers=scale_traffic(dict(emulation.transfers), forwards),
        streamed_spans=forwards * emulation.spans,
        zeroth_order=zeroth_order.to_dict() if zeroth_order else None,
    )


def _count_streamed_flops(emulation: Emulation, handle, flops: FlopCounter) -> list[int]:
    """FLOPs run inside the skipped blocks (the compute their weights' copies can hide behind)."""
    counted = [0]
    for original in handle.originals.values():
        start: list[int] = []

        def before(module, args, start=start):
            start.append(flops.total)

        def after(module, args, output, start=start):
            counted[0] += flops.total - start.pop()

        emulation.handles.append(original.register_forward_pre_hook(before))
        emulation.handles.append(original.register_forward_hook(after))
    return counted

