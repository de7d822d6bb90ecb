"""SkippedBlock: the parameter-free module that takes a skipped block's slot in the model.

It binds the replaced block's arguments, and returns in that block's output layout either the
block's result computed without gradients ("online"), the banked residuals ("cached"), or its
input unchanged ("none"). `apply_block_skip` (in `skip`) builds the stand-ins and their slots.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..families.layouts import BlockIO
from ..residuals.cached import CachedResiduals
from ..residuals.streaming import BlockStreamer


@dataclass(eq=False)
class StandInSlot:
    """What a stand-in needs at run time. A plain object, so `nn.Module` never registers it."""

    original: nn.Module | None  # None once dropped (cached residuals with offload "drop")
    mode: str
    streamer: BlockStreamer
    next_original: nn.Module | None = None
    span_index: int = 0
    position: str = "leading"
    first_in_span: bool = True
    last_in_span: bool = True
    cache: CachedResiduals | None = None


class SkippedBlock(nn.Module):
    """Parameter-free stand-in for a skipped transformer block.

    It accepts exactly the arguments of the block it replaces and returns values in that
    block's output layout (see `BlockIO`).
    """

    def __init__(self, original: nn.Module, io: BlockIO, slot: StandInSlot, qualified_name: str):
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
        elif self.slot.mode == "cached":
            streams = self._cached(args, kwargs, streams)
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

    def _cached(self, args: tuple, kwargs: dict, streams: dict[str, torch.Tensor | None]) -> dict:
        slot, cache = self.slot, self.slot.cache
        if cache.recorded is not None and slot.position == "leading":  # handle.verify(): recompute online
            outputs = self._online(args, kwargs, streams)
            if slot.last_in_span:
                cache.recorded[slot.span_index] = outputs
            return outputs
        if not slot.first_in_span:
            return streams
        span = cache.spans[slot.span_index]
        outputs = dict(streams)
        for role in span["roles"]:
            stored = cache.residual(slot.span_index, role, like=streams[role])
            outputs[role] = stored if span["stores"] == "output" else streams[role] + stored
        return outputs
