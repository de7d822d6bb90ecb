"""Run a block whose weights live elsewhere, one block at a time.

The skipped blocks of an online plan stay on their offload device (the CPU, usually) in the dtype
they had. To run one, we place a copy of its weights on the activations' device and in their dtype
just for that call and hand it to `torch.func.functional_call`, so the block object itself never
changes. On CUDA the next block of the span is copied on a side stream while the current one runs.

Example:
    >>> import torch
    >>> streamer = BlockStreamer()
    >>> block = torch.nn.Linear(4, 4)
    >>> streamer.run(block, torch.device("cpu"), torch.float32, (torch.ones(1, 4),), {}).shape
    torch.Size([1, 4])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _weights(block: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(block.named_parameters(remove_duplicate=False))
    named.update(block.named_buffers(remove_duplicate=False))
    return named


def _placed(block: nn.Module, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        name: tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype, non_blocking=True)
        for name, tensor in _weights(block).items()
    }


class BlockStreamer:
    """Places skipped blocks' weights on the compute device for the duration of one call."""

    def __init__(self, resident: bool = False):
        # resident=True moves a block to the compute device for good on first use (offload "none").
        self.resident = resident
        self._side_stream: torch.cuda.Stream | None = None
        self._staged: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def needs_copy(block: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
        return any(
            tensor.device != device or (tensor.is_floating_point() and tensor.dtype != dtype)
            for tensor in _weights(block).values()
        )

    def run(
        self,
        block: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        args: tuple,
        kwargs: dict[str, Any],
        prefetch: nn.Module | None = None,
    ) -> Any:
        """Call `block(*args, **kwargs)` with its floating weights on `device` in `dtype`.

        `prefetch`, the block that runs next, is staged on a side stream when on CUDA.
        """
        if not self.needs_copy(block, device, dtype):
            return block(*args, **kwargs)
        if self.resident:
            block.to(device=device, dtype=dtype)
            return block(*args, **kwargs)
        weights = self._staged.pop(id(block), None)
        if weights is None:
            weights = _placed(block, device, dtype)
        elif device.type == "cuda":
            torch.cuda.current_stream(device).wait_stream(self._side_stream)
            for tensor in weights.values():
                tensor.record_stream(torch.cuda.current_stream(device))
        if prefetch is not None and device.type == "cuda":
            self._stage(prefetch, device, dtype)
        return torch.func.functional_call(block, weights, args, kwargs, strict=True)

    def _stage(self, block: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        if id(block) in self._staged:
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device)
        self._side_stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._side_stream):
            self._staged[id(block)] = _placed(block, device, dtype)

    def clear(self) -> None:
        self._staged.clear()


def pin_block(block: nn.Module) -> None:
    """Page-lock a CPU block's weights so host-to-device copies can run asynchronously."""
    if not torch.cuda.is_available():
        return
    for tensor in _weights(block).values():
        if tensor.device.type == "cpu" and not tensor.is_pinned():
            tensor.data = tensor.data.pin_memory()
