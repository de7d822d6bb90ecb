"""Peak memory and FLOPs of a LoRA training step at full size, without a GPU.

`estimate_training_memory(model, plan)` builds the model on the meta device, gives it fake tensors
(`blockskip.fake`), applies the plan and its memory trades, adds the LoRA, and runs one real
training step — forward, fp32 loss, backward, optimizer step — on fake tensors while
`blockskip.accounting` counts live storages and FLOPs. It does the same for the unskipped baseline
at the baseline resolution and reports both, with ratios.

What runs is the library's own code (`blockskip.training_step`), so the estimate prices only what
blockskip can do. Three things cannot run on fake CPU tensors and are emulated with the same
memory behaviour:

- **online residuals with `offload: "cpu"`** on a GPU: each skipped block's weights are copied to
  the GPU for its call and the next block's are prefetched (`BlockStreamer`); the emulation holds
  two such copies (`residual_buffers`) while a skipped block runs.
- **cached residuals** (`residuals="cached"`, or a plan whose mode is `cached`): skipped blocks
  cost nothing; the first stand-in of each span takes the bank's tensor for each stored stream
  (`blockskip.spans.stored_roles`), brought to the device for that call, as `SkippedBlock` does.
- **group offload** of kept blocks: a layer's frozen weights are copied in for its forward and
  released after (kept alive by autograd when backward needs them), plus one prefetched layer.

Numbers are `torch.cuda.max_memory_allocated`-style bytes: the CUDA context and allocator slack
(typically 0.3–1 GiB) come on top. The fake run uses CPU attention kernels (flash-style: output and
log-sum-exp saved), which match CUDA's flash/efficient attention in memory.

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

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .accounting import CATEGORIES, FlopCounter, StorageLedger
from .fake import fakeify
from .inspection import model_from_config
from .memory import format_bytes
from .plan import BlockSkipPlan, PatchSettings, ResidualSettings
from .presets import ModelPreset, resolve_model
from .skip import BlockSkipHandle, SkippedBlock, iter_stand_ins
from .spans import stored_roles
from .step_inputs import StepShape, check_shape, family_of, training_inputs
from .trades import _frozen_leaves, kept_blocks
from .training_step import (
    DEFAULT_LORA_TARGETS,
    TrainingSetup,
    attach_lora,
    finish_preparation,
    make_optimizer,
    run_step,
    trainable_parameters,
    without_group_offload,
)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_UNSET: Any = object()


@dataclass
class StepEstimate:
    """One configuration's training step. Bytes are device bytes; FLOPs count matmuls and attention."""

    label: str
    plan: dict[str, Any]
    height: int
    width: int
    frames: int | None
    text_length: int
    batch_size: int
    dtype: str
    residuals: str
    device: str
    peak_bytes: int
    breakdown: dict[str, int]
    resident_bytes: dict[str, int]
    forward_flops: int
    backward_flops: int
    host_bytes: int = 0  # weights waiting on the CPU (skipped blocks, offloaded kept blocks)
    model_parameters: int = 0
    skip: dict[str, Any] = field(default_factory=dict)  # leading, trailing, source
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return self.forward_flops + self.backward_flops

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flops"] = self.flops
        return data


@dataclass
class TrainingEstimate:
    """The plan's step next to the unskipped baseline's."""

    model: str
    parameters: int
    step: StepEstimate
    baseline: StepEstimate | None = None

    @property
    def memory_ratio(self) -> float | None:
        return self.step.peak_bytes / self.baseline.peak_bytes if self.baseline else None

    @property
    def flops_ratio(self) -> float | None:
        return self.step.flops / self.baseline.flops if self.baseline and self.baseline.flops else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "parameters": self.parameters,
            "step": self.step.to_dict(),
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "memory_ratio": self.memory_ratio,
            "flops_ratio": self.flops_ratio,
        }

    def format_table(self) -> str:
        """A side-by-side table: peak, breakdown, FLOPs, for the baseline and the plan."""
        rows = [self.baseline, self.step] if self.baseline else [self.step]
        labels = ["", *(row.label for row in rows)]
        lines: list[list[str]] = [labels]
        lines.append(["resolution", *(_resolution(row) for row in rows)])
        lines.append(["peak memory", *(format_bytes(row.peak_bytes) for row in rows)])
        for category in CATEGORIES:
            lines.append([f"  {category.replace('_', ' ')}", *(format_bytes(row.breakdown[category]) for row in rows)])
        lines.append(["weights on the CPU", *(format_bytes(row.host_bytes) for row in rows)])
        lines.append(["TFLOPs forward", *(f"{row.forward_flops / 1e12:.2f}" for row in rows)])
        lines.append(["TFLOPs backward", *(f"{row.backward_flops / 1e12:.2f}" for row in rows)])
        lines.append(["TFLOPs step", *(f"{row.flops / 1e12:.2f}" for row in rows)])
        widths = [max(len(line[column]) for line in lines) for column in range(len(labels))]
        text = [
            "  ".join(cell.ljust(widths[0]) if column == 0 else cell.rjust(widths[column]) for column, cell in enumerate(line))
            for line in lines
        ]
        header = f"{self.model} ({self.parameters / 1e9:.2f}B parameters), {self.step.dtype}, batch {self.step.batch_size}, text {self.step.text_length} tokens"
        footer = [f"{row.label}: {describe_step(row)}" for row in rows]
        if self.baseline:
            footer.append(f"ratio vs baseline: memory {self.memory_ratio:.2f}, FLOPs {self.flops_ratio:.2f}")
        for row in rows:
            footer.extend(f"{row.label}: {note}" for note in row.notes)
        return "\n".join([header, *text, *footer])


def describe_step(row: StepEstimate) -> str:
    """One line: what the step skips, where residuals come from, which trades it uses."""
    skip = row.skip
    parts = [f"skip {skip.get('leading', 0)} leading + {skip.get('trailing', 0)} trailing"]
    if skip.get("leading") or skip.get("trailing"):
        parts[0] += f" ({skip.get('source')})"
        parts.append(f"{row.residuals} residuals")
    kept = row.plan.get("kept_blocks") or {}
    trades = [name for name, on in (("gradient checkpointing", kept.get("gradient_checkpointing")),
                                    (f"{kept.get('storage_dtype')} weights", kept.get("storage_dtype")),
                                    ("group offload", kept.get("group_offload"))) if on]
    parts.append(", ".join(trades) if trades else "no memory trades")
    return "; ".join(parts)


def _resolution(row: StepEstimate) -> str:
    side = f"{row.height}" if row.height == row.width else f"{row.height}x{row.width}"
    return f"{side}, {row.frames} frames" if row.frames else side


# ---------------------------------------------------------------------- emulations


@dataclass
class _Emulation:
    """Hooks that stand in for what fake CPU tensors cannot do (see module docs)."""

    ledger: StorageLedger
    handles: list = field(default_factory=list)
    held: list = field(default_factory=list)  # buffers alive until the step ends
    extra_peak: int = 0  # bytes added to the peak (a prefetched layer)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.held.clear()


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _weight_casts(func, args, result) -> str | None:
    """fp8 weight storage: a cast to or from fp8 makes a weight (stored, or upcast for compute)."""
    if func is not torch.ops.aten._to_copy.default or not isinstance(result, torch.Tensor):
        return None
    source = args[0] if isinstance(args[0], torch.Tensor) else None
    return "weights" if result.dtype in _FP8 or (source is not None and source.dtype in _FP8) else None


def _tensor_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's tensors, floating ones counted in `dtype` when given."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        size = dtype.itemsize if dtype is not None and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


def _emulate_streaming(emulation: _Emulation, handle: BlockSkipHandle, dtype: torch.dtype) -> None:
    """Online residuals on a GPU with skipped weights on the CPU: current + prefetched block copies."""
    ledger = emulation.ledger
    for span in handle.spans:
        names = span.block_names
        for position, name in enumerate(names):
            original = handle.originals[name]
            size = _tensor_bytes(original, dtype)
            if position + 1 < len(names):
                size += _tensor_bytes(handle.originals[names[position + 1]], dtype)
            live: list[torch.Tensor] = []

            def place(module, args, kwargs, size=size, live=live):
                with ledger.tagged("residual_buffers"):
                    live.append(torch.empty(size, dtype=torch.uint8))

            def release(module, args, kwargs, output, live=live):
                live.clear()

            emulation.handles.append(original.register_forward_pre_hook(place, with_kwargs=True))
            emulation.handles.append(original.register_forward_hook(release, with_kwargs=True))


def _emulate_cached(emulation: _Emulation, model: nn.Module, handle: BlockSkipHandle) -> None:
    """Cached residuals as `SkippedBlock._cached` uses them, with the bank's tensors made up.

    The first stand-in of each span takes the bank's tensor for each stored stream (`bank_spans`):
    a leading span's output replaces the stream, a trailing span's Δ is added to it. Each tensor
    comes to the device for that call only; the bank itself stays in host memory.
    """
    ledger = emulation.ledger
    stored = {(span.list_name, span.start): span for span in handle.spans}
    for stand_in in iter_stand_ins(model):
        list_name, index = stand_in.qualified_name.rsplit(".", 1)
        span = stored.get((list_name, int(index)))
        if span is None:
            continue
        roles = stored_roles(span, stand_in.io)

        def load(module: SkippedBlock, args, output, roles=roles, leading=span.position == "leading"):
            values = output if isinstance(output, tuple) else (output,)
            result = []
            for role, value in zip(module.io.returns, values):
                if value is None or role not in roles:
                    result.append(value)
                    continue
                with ledger.tagged("residual_buffers"):
                    residual = torch.empty_like(value)
                result.append(residual if leading else value + residual)
            return tuple(result) if isinstance(output, tuple) else result[0]

        emulation.handles.append(stand_in.register_forward_hook(load))


def _emulate_group_offload(emulation: _Emulation, model: nn.Module) -> set[int]:
    """Kept blocks' frozen layers live off the device; copies come in per call. Returns their storages."""
    ledger = emulation.ledger
    offloaded: set[int] = set()
    largest = 0
    for block in kept_blocks(model):
        for _, layer in _frozen_leaves(block):
            tensors = [tensor for tensor in layer._parameters.values() if tensor is not None]
            if not tensors:
                continue
            offloaded.update(tensor.untyped_storage()._cdata for tensor in tensors)
            largest = max(largest, sum(tensor.numel() * tensor.element_size() for tensor in tensors))

            def onload(module, args, kwargs):
                stored = {}
                with ledger.tagged("weights"):
                    for name, parameter in module._parameters.items():
                        if parameter is not None:
                            stored[name] = parameter.data
                            parameter.data = parameter.data.clone()
                module._blockskip_offloaded = stored

            def offload(module, args, kwargs, output):
                for name, data in module.__dict__.pop("_blockskip_offloaded", {}).items():
                    module._parameters[name].data = data

            emulation.handles.append(layer.register_forward_pre_hook(onload, with_kwargs=True))
            emulation.handles.append(layer.register_forward_hook(offload, with_kwargs=True))
    emulation.extra_peak = largest  # the layer the side stream prefetches
    return offloaded


# ---------------------------------------------------------------------- one configuration


def _coerce_plan(plan: BlockSkipPlan | dict | str | Path | None) -> BlockSkipPlan:
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
) -> StepEstimate:
    """Run one fake training step of `config` under `plan` and count it (see module docs).

    `resident_only=True` stops before the step: `peak_bytes` is then what stays on the device
    between steps (weights, LoRA, optimizer state), a lower bound the planner uses to skip
    candidates cheaply.
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
    ledger = StorageLedger("cpu", classify=_weight_casts if plan.kept_blocks.storage_dtype else None)
    emulation = _Emulation(ledger)
    notes: list[str] = []
    handle = attach_lora(model, run_plan, setup)
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    fakeify(model, dtype, fake)
    for original in handle.originals.values():
        fakeify(original, dtype, fake, keep_in_fp32=keep)
    with fake:
        finish_preparation(model, setup, without_group_offload(run_plan))
        optimizer = make_optimizer(model, setup, foreach=device == "cuda")
        offloaded: set[int] = set()
        if plan.kept_blocks.group_offload:
            offloaded = _emulate_group_offload(emulation, model)
        if mode == "online" and plan.offload == "cpu" and device == "cuda" and handle.originals:
            _emulate_streaming(emulation, handle, dtype)
        if mode == "cached" and handle.spans:
            _emulate_cached(emulation, model, handle)
            notes.append("cached residuals emulated: skipped blocks cost nothing; each span's stored tensor comes in per step")
        _register_model(ledger, model, offloaded)
        if plan.offload == "none" and mode != "cached":
            for original in handle.originals.values():
                for tensor in original.parameters():
                    ledger.register(tensor, "weights")
        _register_optimizer(ledger, optimizer)
        resident = {name: ledger.live_by_category[name] for name in ("weights", "lora_params", "optimizer_state")}
        host = 0 if plan.offload == "none" or mode == "cached" else sum(_tensor_bytes(o) for o in handle.originals.values())
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
        for parameter in trainable_parameters(model):
            emulation.handles.append(
                parameter.register_post_accumulate_grad_hook(lambda p: ledger.retag(p.grad, "lora_grads"))
            )
        flops = FlopCounter()
        marks: dict[str, int] = {}

        def on_phase(phase: str) -> None:
            marks[phase] = flops.total
            ledger.category = "optimizer_state" if phase == "optimizer" else "activations"

        try:
            with flops, ledger:
                inputs, target = training_inputs(model, shape, dtype)
                run_step(model, inputs, target, optimizer, on_phase=on_phase)
                del inputs, target
        finally:
            emulation.remove()
    breakdown = ledger.breakdown()
    peak = ledger.peak_bytes
    if emulation.extra_peak:
        breakdown["weights"] += emulation.extra_peak
        peak += emulation.extra_peak
        notes.append(f"group offload: {format_bytes(emulation.extra_peak)} for the layer prefetched on the side stream")
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
        forward_flops=marks.get("backward", 0),
        backward_flops=marks.get("optimizer", 0) - marks.get("backward", 0),
        host_bytes=host,
        model_parameters=model_parameters,
        skip={"leading": handle.split.leading, "trailing": handle.split.trailing, "source": handle.split.source},
        seconds=time.perf_counter() - started,
        notes=notes,
    )


# ---------------------------------------------------------------------- public entry point


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
) -> TrainingEstimate:
    """Estimate a LoRA training step's peak memory and FLOPs under `plan`, and the baseline's.

    `model_or_config`: a preset name (`"flux.1-dev"`, see `blockskip.presets`), a `config.json`
    or model folder, a config dict, or a diffusers model (its config is used; its weights are not).
    `resolution` defaults to the plan's `patches.min_size` (every crop is resized to it) and
    `baseline_resolution` to `patches.max_size`; a plan that leaves `patches` at its defaults takes
    the preset's resolutions instead (Sana: 512 and 1024). `gradient_checkpointing`, `storage_dtype` and
    `group_offload` override the plan's `kept_blocks`. `residuals="cached"` prices the paper's
    cached residuals (skipped blocks cost nothing). `device="cpu"` prices a CPU run (no weight
    streaming), for comparison with `measure_peak_memory`. The baseline is the same LoRA step
    with no skip and no trades.
    """
    config, preset, label = resolve_model(model_or_config)
    class_name = config["_class_name"]
    plan = with_kept_blocks(
        _coerce_plan(plan),
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
    step = estimate_step(config, plan, shape, setup, dtype=torch_dtype, device=device, residuals=residuals, label="BlockSkip")
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
    return TrainingEstimate(model=label, parameters=step.model_parameters, step=step, baseline=base)
