"""Count what a training step keeps alive and computes: live storages per category, and FLOPs.

`StorageLedger` extends the CPU storage counter of `blockskip.estimate.memory` in three ways the estimator
needs:

- a storage is counted for as long as the *storage* lives (a weak reference on the storage
  object, not on the tensor that first showed it), so replacing a parameter's `.data` — which
  is what fp8 upcasting and weight offloading do — frees the old bytes;
- tensors that existed before the step (weights, LoRA, optimizer state) are registered
  explicitly under a category, instead of being an opaque baseline;
- every byte carries a category (`weights`, `lora_params`, `lora_grads`, `optimizer_state`,
  `residual_buffers`, `activations`), and the mix at the moment of the peak is kept.

It works the same on real CPU tensors and on fake tensors (`FakeTensorMode`), which is what
lets a full-size model be measured without allocating it.

Example:
    >>> import torch
    >>> ledger = StorageLedger("cpu")
    >>> weights = torch.zeros(1024)                    # 4 KiB, existed before
    >>> ledger.register(weights, "weights")
    >>> with ledger:
    ...     x = weights * 2                            # +4 KiB of activations
    ...     y = x.view(32, 32)                         # a view: nothing new
    ...     del x, y
    >>> ledger.peak_bytes, ledger.peak_by_category["activations"]
    (8192, 4096)
"""

from __future__ import annotations

import weakref
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_iter

from .memory import _StorageCounter

CATEGORIES = ("weights", "lora_params", "lora_grads", "optimizer_state", "residual_buffers", "activations")


class StorageLedger(_StorageCounter):
    """Live bytes per category on one device type, counted by storage lifetime (see module docs)."""

    def __init__(self, device_type: str = "cpu", classify=None):
        super().__init__(preexisting=set())
        self.device_type = device_type
        # classify(func, args, result) -> a category for the op's new storages, or None for the current one.
        self.classify = classify
        self.category = "activations"  # the category of storages first seen from now on
        self.live_by_category: Counter[str] = Counter()
        self.peak_by_category: dict[str, int] = {}
        self._entries: dict[int, list] = {}  # storage key -> [nbytes, category]

    # -------------------------------------------------------------- what gets counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # An output sharing an input's storage is a view or an in-place result, not new memory.
        # Without this, a view of an unregistered tensor (a skipped block's weight on the host,
        # say) would be counted as new bytes that never die.
        inputs = {self._key(tensor) for tensor in tree_iter((args, kwargs))}
        result = func(*args, **kwargs)
        category = self.classify(func, args, result) if self.classify is not None else None
        for tensor in tree_iter(result):
            key = self._key(tensor)
            if key is not None and key not in inputs:
                self._track(tensor, category)
        return result

    def _key(self, tensor) -> int | None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != self.device_type:
            return None
        try:
            return tensor.untyped_storage()._cdata
        except (RuntimeError, NotImplementedError):  # subclasses without a storage of their own
            return None

    def _track(self, tensor, category: str | None = None) -> None:
        key = self._key(tensor)
        if key is None or key in self._entries:
            return
        storage = tensor.untyped_storage()
        entry = self._entries[key] = [storage.nbytes(), category or self.category]
        self.live_by_category[entry[1]] += entry[0]
        self.live_bytes += entry[0]
        weakref.finalize(storage, self._free, key)
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_by_category = dict(self.live_by_category)

    def _free(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.live_bytes -= entry[0]
            self.live_by_category[entry[1]] -= entry[0]

    # -------------------------------------------------------------- public helpers

    def register(self, tensor: torch.Tensor, category: str) -> None:
        """Count a tensor that already exists (a weight, a LoRA parameter, optimizer state)."""
        self._track(tensor, category)

    def retag(self, tensor: torch.Tensor, category: str) -> None:
        """Move a live storage to another category (a gradient once it lands in `.grad`)."""
        key = self._key(tensor)
        entry = self._entries.get(key) if key is not None else None
        if entry is None:
            self._track(tensor, category)
            return
        self.live_by_category[entry[1]] -= entry[0]
        self.live_by_category[category] += entry[0]
        entry[1] = category

    @contextmanager
    def tagged(self, category: str) -> Iterator[None]:
        """Storages first seen inside this block belong to `category`."""
        previous, self.category = self.category, category
        try:
            yield
        finally:
            self.category = previous

    def breakdown(self) -> dict[str, int]:
        """Bytes per category at the peak, every category present (zeros included)."""
        return {name: max(0, self.peak_by_category.get(name, 0)) for name in CATEGORIES}


# ---------------------------------------------------------------------- FLOPs


def _prod(values) -> int:
    result = 1
    for value in values:
        result *= int(value)
    return result


def _mm(args, out) -> int:  # (m, k) @ (k, n)
    a, b = args[0], args[1]
    return 2 * a.shape[0] * a.shape[1] * b.shape[1]


def _addmm(args, out) -> int:
    return _mm(args[1:], out)


def _bmm(args, out) -> int:  # (b, m, k) @ (b, k, n)
    a, b = args[0], args[1]
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _baddbmm(args, out) -> int:
    return _bmm(args[1:], out)


def _convolution_cost(image: torch.Tensor, weight: torch.Tensor, output: torch.Tensor, transposed: bool) -> int:
    # Every output (or, transposed, every input) element is a dot product over in/groups × kernel.
    per_element = weight.shape[1] * _prod(weight.shape[2:])
    return 2 * (image.numel() if transposed else output.numel()) * per_element


def _convolution(args, out) -> int:
    image, weight, transposed = args[0], args[1], bool(args[6])
    return _convolution_cost(image, weight, out, transposed)


def _convolution_backward(args, out) -> int:
    grad_output, image, weight, transposed, mask = args[0], args[1], args[2], bool(args[7]), args[10]
    forward = _convolution_cost(image, weight, grad_output, transposed)
    return forward * (int(bool(mask[0])) + int(bool(mask[1])))


def _attention(args, out) -> int:  # scores = q kᵀ, then p v
    query, key, value = args[0], args[1], args[2]
    batch, heads, length_q, dim = query.shape
    return 2 * batch * heads * length_q * key.shape[-2] * (dim + value.shape[-1])


def _attention_backward(args, out) -> int:  # grad_v = pᵀ g, grad_p = g vᵀ, grad_q = grad_s k, grad_k = grad_sᵀ q
    query, key, value = args[1], args[2], args[3]
    batch, heads, length_q, dim = query.shape
    return 2 * batch * heads * length_q * key.shape[-2] * 2 * (dim + value.shape[-1])


def _flop_table() -> dict:
    aten = torch.ops.aten
    table = {
        aten.mm.default: _mm,
        aten.addmm.default: _addmm,
        aten.bmm.default: _bmm,
        aten.baddbmm.default: _baddbmm,
        aten.convolution.default: _convolution,
        aten.convolution_backward.default: _convolution_backward,
    }
    forward = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    for name in forward:
        if hasattr(aten, name):
            table[getattr(aten, name).default] = _attention
            if hasattr(aten, name + "_backward"):
                table[getattr(aten, name + "_backward").default] = _attention_backward
    return table


class FlopCounter(TorchDispatchMode):
    """FLOPs of matrix products, convolutions and attention run inside the block (2 per multiply-add).

    Elementwise work (norms, activations, the optimizer) is not counted, as is customary. Unlike
    `torch.utils.flop_counter.FlopCounterMode`, nothing is attached to modules or tensors, so the
    memory of what runs inside is not changed (its module tracker keeps checkpointed activations
    alive).

    Example:
        >>> import torch
        >>> with FlopCounter() as flops:
        ...     _ = torch.ones(4, 8) @ torch.ones(8, 16)
        >>> flops.total
        1024
    """

    def __init__(self):
        super().__init__()
        self.total = 0
        self._table = _flop_table()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        cost = self._table.get(func)
        if cost is not None:
            self.total += cost(args, result)
        return result
