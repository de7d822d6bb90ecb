"""Peak memory of a block of code: CUDA's allocator statistics, or counted tensor storages on CPU.

On CUDA, `torch.cuda.max_memory_allocated` already knows the answer. The CPU allocator keeps no
statistics, so there we count: every tensor an operator returns inside the block is looked at,
its storage is counted once while any tensor still refers to it, and the running total of live
bytes gives the peak. Storages that existed before the block (the model's weights, say) are found
by a garbage-collector scan at entry and reported as `baseline_bytes`.

Example:
    >>> import torch
    >>> with measure_peak_memory("cpu") as usage:
    ...     x = torch.ones(1024, 1024)   # 4 MiB
    ...     y = x * 2                    # +4 MiB
    ...     del x, y
    >>> usage.peak_bytes - usage.baseline_bytes
    8388608
"""

from __future__ import annotations

import gc
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter


@dataclass
class MemoryUsage:
    """Filled in when the measured block ends. All numbers are bytes."""

    device: str
    baseline_bytes: int = 0  # allocated when the block began
    peak_bytes: int = 0  # the most allocated at any moment inside the block, baseline included

    @property
    def peak_increase_bytes(self) -> int:
        return self.peak_bytes - self.baseline_bytes


def _storage_key(tensor: torch.Tensor) -> int | None:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu" or tensor.is_meta:
        return None
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensor subclasses without real storage
        return None


def _live_cpu_storages() -> dict[int, int]:
    """Every CPU tensor storage reachable from Python right now, with its size."""
    storages = {}
    with warnings.catch_warnings():  # isinstance() on some deprecated module proxies warns
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor):
                key = _storage_key(obj)
                if key is not None:
                    storages[key] = obj.untyped_storage().nbytes()
    return storages


class _StorageCounter(TorchDispatchMode):
    """Counts bytes of CPU storages created inside the mode while they stay alive."""

    def __init__(self, preexisting: set[int]):
        super().__init__()
        self.preexisting = preexisting
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storage_refs: dict[int, list[int]] = {}  # key -> [tensor count, nbytes]
        self._tracked_tensors: set[int] = set()  # ids of live tensors already counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        for tensor in tree_iter(result):
            self._track(tensor)
        return result

    def _track(self, tensor) -> None:
        key = _storage_key(tensor)
        if key is None or key in self.preexisting or id(tensor) in self._tracked_tensors:
            return
        self._tracked_tensors.add(id(tensor))
        entry = self._storage_refs.get(key)
        if entry is None:
            entry = self._storage_refs[key] = [0, tensor.untyped_storage().nbytes()]
            self.live_bytes += entry[1]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[0] += 1
        weakref.finalize(tensor, self._release, key, id(tensor))

    def _release(self, key: int, tensor_id: int) -> None:
        self._tracked_tensors.discard(tensor_id)
        entry = self._storage_refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live_bytes -= entry[1]
            del self._storage_refs[key]


@contextmanager
def measure_peak_memory(device: str | torch.device = "cpu") -> Iterator[MemoryUsage]:
    """Measure the peak memory allocated on `device` while the block runs.

    CUDA: from the allocator (`max_memory_allocated`). CPU: counted tensor storages (see the
    module docstring); tensors created on other threads are not seen, which matters only for
    CPU work done by data-loader threads.
    """
    device = torch.device(device)
    usage = MemoryUsage(device=str(device))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        usage.baseline_bytes = torch.cuda.memory_allocated(device)
        try:
            yield usage
        finally:
            torch.cuda.synchronize(device)
            usage.peak_bytes = torch.cuda.max_memory_allocated(device)
        return
    if device.type != "cpu":
        raise ValueError(f"measure_peak_memory supports cpu and cuda devices, not {device.type}")
    gc.collect()
    preexisting = _live_cpu_storages()
    usage.baseline_bytes = sum(preexisting.values())
    counter = _StorageCounter(set(preexisting))
    try:
        with counter:
            yield usage
    finally:
        usage.peak_bytes = usage.baseline_bytes + counter.peak_bytes


def format_bytes(count: float) -> str:
    """`1536` -> `'1.5 KiB'`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
