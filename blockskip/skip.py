"""apply_block_skip / remove_block_skip: train the middle of a DiT, keep the ends as residuals.

`apply_block_skip(model, plan)` replaces the first n and last m transformer blocks of a diffusers
transformer with parameter-free stand-ins. Every stand-in keeps its slot, so block indices and
state-dict keys of the kept blocks do not move and a LoRA trained on the skipped model loads
into the full one. The original blocks leave the module tree (`.to()`, `add_adapter`, DDP and
optimizers never see them) and wait on the plan's offload device.

What a stand-in returns depends on `plan.residuals.mode`:
- "online": it runs its original block under `torch.no_grad()` on the stream it receives, with
  the weights streamed to the activations' device, and returns `input + Δ` in the block's own
  output layout, where Δ is detached. Upstream of the first kept block nothing trains, so a
  leading span returns the original block's output unchanged (exact, bit for bit). A trailing
  span's input carries gradients, and Δ acts as a stop-gradient residual.
- "none": it returns its input (naive skipping, the ablation baseline).

Example:
    >>> import torch
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, BlockSkipPlan.from_dict({"skip": {"leading": 3, "trailing": 1}}))
    >>> handle.skipped_block_names()
    ['transformer_blocks.0', 'transformer_blocks.1', 'single_transformer_blocks.0', 'single_transformer_blocks.3']
    >>> model = remove_block_skip(model)
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .layouts import BlockIO, ModelLayout, block_io_for, get_layout
from .plan import BlockSkipPlan
from .residuals.streaming import BlockStreamer, pin_block
from .skip_table import SkipSplit

HANDLE_ATTRIBUTE = "_blockskip_handle"


class BlockSkipError(RuntimeError):
    """apply/remove was used on a model in the wrong state."""


@dataclass(frozen=True)
class SkipSpan:
    """Consecutive skipped blocks inside one block list: `list_name[start:stop]`."""

    list_name: str
    start: int
    stop: int
    position: str  # "leading" or "trailing"

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def block_names(self) -> list[str]:
        return [f"{self.list_name}.{index}" for index in range(self.start, self.stop)]


@dataclass(eq=False)
class _Slot:
    """What a stand-in needs at run time. A plain object, so `nn.Module` never registers it."""

    original: nn.Module
    mode: str
    streamer: BlockStreamer
    next_original: nn.Module | None = None


class SkippedBlock(nn.Module):
    """Parameter-free stand-in for a skipped transformer block.

    It accepts exactly the arguments of the block it replaces and returns values in that
    block's output layout (see `BlockIO`).
    """

    def __init__(self, original: nn.Module, io: BlockIO, slot: _Slot, qualified_name: str):
        super().__init__()
        self.replaced_class = type(original).__name__
        self.qualified_name = qualified_name
        self.io = io
        self.slot = slot
        self._signature = inspect.signature(original.forward)

    def extra_repr(self) -> str:
        return f"replaces={self.replaced_class}, mode={self.slot.mode}"

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        arguments = self._signature.bind(*args, **kwargs).arguments
        streams = {role: arguments.get(self.io.argument_for(role)) for role in self.io.returns}
        if self.slot.mode == "online":
            streams = self._online(args, kwargs, streams)
        values = tuple(streams[role] for role in self.io.returns)
        return values if self.io.returns_tuple else values[0]

    def _online(self, args: tuple, kwargs: dict, streams: dict[str, torch.Tensor | None]) -> dict:
        reference = next(tensor for tensor in streams.values() if tensor is not None)
        slot = self.slot
        tracking_gradients = torch.is_grad_enabled()
        with torch.no_grad():
            result = slot.streamer.run(
                slot.original, reference.device, reference.dtype, args, kwargs, prefetch=slot.next_original
            )
            result = result if self.io.returns_tuple else (result,)
            fresh = dict(zip(self.io.returns, result))
            outputs, deltas = {}, {}
            for role, old in streams.items():
                new = fresh[role]
                if new is not None and old is not None and tracking_gradients and old.requires_grad:
                    deltas[role] = new - old
                else:
                    outputs[role] = new
        for role, delta in deltas.items():
            outputs[role] = streams[role] + delta
        return outputs


@dataclass(eq=False)
class BlockSkipHandle:
    """What `apply_block_skip` did to a model; records the plan and undoes the change."""

    plan: BlockSkipPlan
    layout: ModelLayout
    split: SkipSplit
    spans: list[SkipSpan]
    originals: dict[str, nn.Module] = field(repr=False)
    model_device: torch.device = field(repr=False, default=torch.device("cpu"))
    model_dtype: torch.dtype = field(repr=False, default=torch.float32)

    def skipped_block_names(self) -> list[str]:
        return [name for span in self.spans for name in span.block_names]

    def kept_block_names(self) -> list[str]:
        skipped = set(self.skipped_block_names())
        return [
            f"{block_list.name}.{index}"
            for block_list in self.layout
            for index in range(len(block_list))
            if f"{block_list.name}.{index}" not in skipped
        ]

    def save_plan(self, directory: str | Path) -> Path:
        """Write the plan as `blockskip_plan.json` in `directory` (beside a saved LoRA)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return self.plan.save(directory / "blockskip_plan.json")

    def summary(self) -> str:
        spans = ", ".join(f"{span.position} {span.list_name}[{span.start}:{span.stop}]" for span in self.spans)
        return (
            f"{self.layout.model_class}: {self.layout.num_blocks} blocks, skipping {self.split.leading} leading + "
            f"{self.split.trailing} trailing ({self.split.source}); spans: {spans or 'none'}; "
            f"residuals: {self.plan.residuals.mode}; offload: {self.plan.offload}"
        )


def _coerce_plan(plan: BlockSkipPlan | dict | str | Path) -> BlockSkipPlan:
    if isinstance(plan, BlockSkipPlan):
        return plan
    if isinstance(plan, dict):
        return BlockSkipPlan.from_dict(plan)
    return BlockSkipPlan.load(plan)


def _spans(layout: ModelLayout, split: SkipSplit) -> list[SkipSpan]:
    """Cut the leading and trailing ranges at block-list boundaries."""
    total = layout.num_blocks
    ranges = [(0, split.leading, "leading"), (total - split.trailing, total, "trailing")]
    spans = []
    for begin, end, position in ranges:
        for block_list in layout:
            start = max(begin, block_list.offset) - block_list.offset
            stop = min(end, block_list.offset + len(block_list)) - block_list.offset
            if start < stop:
                spans.append(SkipSpan(block_list.name, start, stop, position))
    return spans


def _reject_lora(block: nn.Module, name: str) -> None:
    for parameter_name, _ in block.named_parameters():
        if "lora_" in parameter_name:
            raise BlockSkipError(
                f"{name}.{parameter_name} is a LoRA weight; call apply_block_skip before add_adapter, "
                "so that LoRA lands only in the kept blocks"
            )


def _first_parameter(model: nn.Module) -> torch.Tensor | None:
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def apply_block_skip(model: nn.Module, plan: BlockSkipPlan | dict | str | Path) -> BlockSkipHandle:
    """Skip the plan's leading and trailing blocks of `model`, in place. Returns the handle.

    `plan` may be a `BlockSkipPlan`, its dict, or the path of a plan file. Call this before
    `add_adapter` (so LoRA goes only into kept blocks) and before moving the model to the GPU
    (so skipped weights never get there).
    """
    plan = _coerce_plan(plan)
    if getattr(model, HANDLE_ATTRIBUTE, None) is not None:
        raise BlockSkipError(
            f"block skip is already applied to this {type(model).__name__}; call remove_block_skip first"
        )
    if plan.residuals.mode == "cached":
        raise NotImplementedError(
            'residuals.mode "cached" (a precomputed residual bank) is not available in this release; '
            'use "online", which gives the same leading-span residuals without a bank'
        )
    layout = get_layout(model)
    split = plan.resolve_skip(layout.model_class, layout.num_blocks)
    spans = _spans(layout, split)
    reference = _first_parameter(model)
    streamer = BlockStreamer(resident=plan.offload == "none")

    originals: dict[str, nn.Module] = {}
    for span in spans:
        blocks = getattr(model, span.list_name)
        for index in range(span.start, span.stop):
            name = f"{span.list_name}.{index}"
            block_io_for(blocks[index])
            _reject_lora(blocks[index], name)
            originals[name] = blocks[index]

    for span in spans:
        blocks = getattr(model, span.list_name)
        span_originals = [originals[name] for name in span.block_names]
        for offset, index in enumerate(range(span.start, span.stop)):
            original = span_originals[offset]
            following = span_originals[offset + 1] if offset + 1 < len(span_originals) else None
            if plan.offload == "cpu":
                original.to("cpu")
                pin_block(original)
            slot = _Slot(original, plan.residuals.mode, streamer, following)
            blocks[index] = SkippedBlock(original, block_io_for(original), slot, f"{span.list_name}.{index}")

    handle = BlockSkipHandle(
        plan=plan,
        layout=layout,
        split=split,
        spans=spans,
        originals=originals,
        model_device=reference.device if reference is not None else torch.device("cpu"),
        model_dtype=reference.dtype if reference is not None else torch.float32,
    )
    setattr(model, HANDLE_ATTRIBUTE, handle)
    return handle


def get_block_skip(model: nn.Module) -> BlockSkipHandle | None:
    """The handle of the block skip applied to `model` (unwrapping DDP/compile), or None."""
    for candidate in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        handle = getattr(candidate, HANDLE_ATTRIBUTE, None) if candidate is not None else None
        if handle is not None:
            return handle
    return None


def remove_block_skip(model: nn.Module) -> nn.Module:
    """Put the original blocks back in place and return `model`.

    The originals follow the model: if it moved to another device or dtype since the skip was
    applied, they are moved the same way. Otherwise they come back untouched, and the model's
    outputs are bit-identical to those before `apply_block_skip`.
    """
    handle = getattr(model, HANDLE_ATTRIBUTE, None)
    if handle is None:
        raise BlockSkipError(f"no block skip is applied to this {type(model).__name__}")
    reference = _first_parameter(model)
    device = reference.device if reference is not None else handle.model_device
    dtype = reference.dtype if reference is not None else handle.model_dtype
    for name, original in handle.originals.items():
        list_name, index = name.rsplit(".", 1)
        blocks = getattr(model, list_name)
        stand_in = blocks[int(index)]
        if not isinstance(stand_in, SkippedBlock) or stand_in.slot.original is not original:
            raise BlockSkipError(f"{name} no longer holds blockskip's stand-in; the model was changed since apply")
        original.to(device)
        if dtype != handle.model_dtype:
            original.to(dtype)
        blocks[int(index)] = original
    delattr(model, HANDLE_ATTRIBUTE)
    return model


def iter_stand_ins(model: nn.Module) -> Iterable[SkippedBlock]:
    return (module for module in model.modules() if isinstance(module, SkippedBlock))


def describe_plan(model: nn.Module, plan: BlockSkipPlan) -> dict[str, Any]:
    """What `plan` would do to `model`, without changing it (for `blockskip inspect`)."""
    layout = get_layout(model)
    split = plan.resolve_skip(layout.model_class, layout.num_blocks)
    spans = _spans(layout, split)
    return {
        "model": layout.model_class,
        "num_blocks": layout.num_blocks,
        "leading": split.leading,
        "trailing": split.trailing,
        "source": split.source,
        "spans": [json.loads(json.dumps(span.__dict__)) for span in spans],
    }
