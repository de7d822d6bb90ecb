"""Stand-ins for what a fake CPU step cannot run, with the same memory behaviour on the device.

- **online residuals with `offload: "cpu"`** on a GPU: each skipped block's weights are copied to
  the GPU for its call and the next block's are prefetched (`BlockStreamer`); the emulation holds
  two such copies (`residual_buffers`) while a skipped block runs.
- **cached residuals** (`residuals="cached"`, or a plan whose mode is `cached`): skipped blocks
  cost nothing; the first stand-in of each span takes the bank's tensor for each stored stream
  (`blockskip.skipping.spans.stored_roles`), brought to the device for that call, as `SkippedBlock` does.
- **group offload** of kept blocks: a layer's frozen weights are copied in for its forward and
  released after (kept alive by autograd when backward needs them), plus one prefetched layer.

Each `emulate_*` function adds hooks to an `Emulation`, which removes them all at the end of the step.

Example:
    >>> from torch import nn
    >>> tensor_bytes(nn.Linear(4, 4)), tensor_bytes(nn.Linear(4, 4), torch.bfloat16)
    (80, 40)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..skipping.skip import BlockSkipHandle, SkippedBlock, iter_stand_ins
from ..skipping.spans import stored_roles
from ..skipping.trades import _frozen_leaves, kept_blocks
from .accounting import StorageLedger


@dataclass
class Emulation:
    """Hooks that stand in for what fake CPU tensors cannot do (see the module docs)."""

    ledger: StorageLedger
    handles: list = field(default_factory=list)
    held: list = field(default_factory=list)  # buffers alive until the step ends
    extra_peak: int = 0  # bytes added to the peak (a prefetched layer)
    # Host → device copies the step makes, per kind ("streamed", "offload", "bank"): bytes and count.
    traffic: dict[str, int] = field(default_factory=dict)
    transfers: dict[str, int] = field(default_factory=dict)
    spans: int = 0  # runs of streamed blocks: the first copy of each has no compute to hide behind

    def copied(self, kind: str, size: int) -> None:
        self.traffic[kind] = self.traffic.get(kind, 0) + size
        self.transfers[kind] = self.transfers.get(kind, 0) + 1

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.held.clear()


_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def weight_casts(func, args, result) -> str | None:
    """fp8 weight storage: a cast to or from fp8 makes a weight (stored, or upcast for compute)."""
    if func is not torch.ops.aten._to_copy.default or not isinstance(result, torch.Tensor):
        return None
    source = args[0] if isinstance(args[0], torch.Tensor) else None
    return "weights" if result.dtype in _FP8 or (source is not None and source.dtype in _FP8) else None


def tensor_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's tensors, floating ones counted in `dtype` when given."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        size = dtype.itemsize if dtype is not None and tensor.is_floating_point() else tensor.element_size()
        total += tensor.numel() * size
    return total


def emulate_streaming(emulation: Emulation, handle: BlockSkipHandle, dtype: torch.dtype) -> None:
    """Online residuals on a GPU with skipped weights on the CPU: current + prefetched block copies."""
    ledger = emulation.ledger
    emulation.spans = len(handle.spans)
    for span in handle.spans:
        names = span.block_names
        for position, name in enumerate(names):
            original = handle.originals[name]
            own = tensor_bytes(original, dtype)
            size = own
            if position + 1 < len(names):
                size += tensor_bytes(handle.originals[names[position + 1]], dtype)
            live: list[torch.Tensor] = []

            def place(module, args, kwargs, size=size, own=own, live=live):
                emulation.copied("streamed", own)
                with ledger.tagged("residual_buffers"):
                    live.append(torch.empty(size, dtype=torch.uint8))

            def release(module, args, kwargs, output, live=live):
                live.clear()

            emulation.handles.append(original.register_forward_pre_hook(place, with_kwargs=True))
            emulation.handles.append(original.register_forward_hook(release, with_kwargs=True))


def emulate_cached(emulation: Emulation, model: nn.Module, handle: BlockSkipHandle) -> None:
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
                emulation.copied("bank", residual.numel() * residual.element_size())
                result.append(residual if leading else value + residual)
            return tuple(result) if isinstance(output, tuple) else result[0]

        emulation.handles.append(stand_in.register_forward_hook(load))


def emulate_group_offload(emulation: Emulation, model: nn.Module) -> set[int]:
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
                            emulation.copied("offload", parameter.numel() * parameter.element_size())
                module._blockskip_offloaded = stored

            def offload(module, args, kwargs, output):
                for name, data in module.__dict__.pop("_blockskip_offloaded", {}).items():
                    module._parameters[name].data = data

            emulation.handles.append(layer.register_forward_pre_hook(onload, with_kwargs=True))
            emulation.handles.append(layer.register_forward_hook(offload, with_kwargs=True))
    emulation.extra_peak = largest  # the layer the side stream prefetches
    return offloaded
