"""Cached residuals at training time: the current step's bank entries, prefetched in the background.

`apply_block_skip` with `residuals.mode = "cached"` opens the bank and gives the handle a
`CachedResiduals`. A training loop names the batch's entries around its forward pass:

    with handle.step(keys, next_keys=keys_of_the_next_step):
        loss = compute_loss(model(**inputs))
    loss.backward()

While this step trains, a background thread reads the next step's entries, so bank reads stay off
the critical path; `wait_seconds` says how long steps still waited for them.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from .bank import BankError, BankReader


class CachedResiduals:
    """The bank entries of the step being trained, and the reads of the next one."""

    def __init__(self, reader: BankReader):
        self.reader = reader
        self.spans = reader.manifest["spans"]
        self.wait_seconds = 0.0
        self._current: dict[str, torch.Tensor] | None = None
        self._current_keys: tuple[str, ...] = ()
        self._pending: tuple[tuple[str, ...], Future] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockskip-bank")
        self.recorded: dict[int, dict[str, torch.Tensor]] | None = None  # set while verifying

    def _read(self, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
        tensors = self.reader.load(keys)
        if torch.cuda.is_available():
            tensors = {name: tensor.pin_memory() for name, tensor in tensors.items()}
        return tensors

    def prefetch(self, keys: Sequence[str]) -> None:
        """Start reading `keys` in the background (the next step's batch)."""
        keys = tuple(keys)
        if self._pending is None or self._pending[0] != keys:
            self._pending = (keys, self._executor.submit(self._read, keys))

    @contextmanager
    def step(self, keys: Sequence[str], next_keys: Sequence[str] | None = None) -> Iterator[None]:
        """Make `keys` (one per batch row, in batch order) the residuals of the forward passes inside."""
        keys = tuple(keys)
        start = time.perf_counter()
        if self._pending is not None and self._pending[0] == keys:
            tensors = self._pending[1].result()
            self._pending = None
        else:
            tensors = self._read(keys)
        self.wait_seconds += time.perf_counter() - start
        if next_keys is not None:
            self.prefetch(next_keys)
        self._current, self._current_keys = tensors, keys
        try:
            yield
        finally:
            self._current, self._current_keys = None, ()

    def residual(self, span_index: int, role: str, like: torch.Tensor) -> torch.Tensor:
        """The current step's stored tensor for a span's stream, on `like`'s device and dtype."""
        if self._current is None:
            raise BankError(
                "cached residuals are only available inside `with handle.step(keys):` around the forward pass"
            )
        tensor = self._current[f"{span_index}/{role}"]
        if tensor.shape != like.shape:
            raise BankError(
                f"bank entries {list(self._current_keys)[:4]}… hold span {span_index} {role} of shape "
                f"{tuple(tensor.shape)}, but the model's stream has shape {tuple(like.shape)}: "
                "wrong keys for this batch, or a bank made for other inputs"
            )
        return tensor.to(like.device, like.dtype, non_blocking=True)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
