"""Cached residuals at training time: the current step's bank entries, prefetched in the background.

`apply_block_skip` with `residuals.mode = "cached"` opens the bank and gives the handle a
`CachedResiduals`. A training loop names the batch's entries around its forward pass:

    with handle.step(keys, next_keys=keys_of_the_next_step):
        loss = compute_loss(model(**inputs))
    loss.backward()

While this step trains, a background thread reads the next step's entries, so bank reads stay off
the critical path; `wait_seconds` says how long steps still waited for them.

Every forward pass inside a step first checks that the model is fed the inputs the step's entries
were computed from: a forward pre-hook on the model hashes the tensor arguments row by row
(`input_binding.row_hashes`) and compares them with the hashes the bank recorded, refusing with
`BankError` before any block runs. It copies the inputs to the CPU once per forward and hashes
them (about 5 MB per FLUX.1-dev sample at 1024², a few milliseconds). `check_inputs = False`
turns it off; `handle.verify()` replaces it by a full recomputation.
"""

from __future__ import annotations

import inspect
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .bank import BankError, BankReader
from .input_binding import row_hashes


class CachedResiduals:
    """The bank entries of the step being trained, and the reads of the next one."""

    def __init__(self, reader: BankReader, model: nn.Module | None = None, check_inputs: bool = True):
        self.reader = reader
        self.spans = reader.manifest["spans"]
        self.wait_seconds = 0.0
        self.check_inputs = check_inputs
        self._hook = None
        self._current: dict[str, torch.Tensor] | None = None
        self._current_keys: tuple[str, ...] = ()
        self._pending: tuple[tuple[str, ...], Future] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="blockskip-bank")
        self.recorded: dict[int, dict[str, torch.Tensor]] | None = None  # set while verifying
        if model is not None:
            self.watch(model)

    def watch(self, model: nn.Module) -> None:
        """Check the inputs of every forward of `model` inside a step against the bank (see the module doc)."""
        if self._hook is not None:
            self._hook.remove()
        signature = inspect.signature(model.forward)

        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._current is None or not self.check_inputs or self.recorded is not None:
                return  # outside a step the stand-ins refuse; verify() recomputes instead
            try:
                arguments = dict(signature.bind(*args, **kwargs).arguments)
            except TypeError:
                return  # the model's own call reports the bad arguments
            for name, parameter in signature.parameters.items():
                if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(arguments.pop(name, {}))
            self.check_step_inputs(arguments)

        self._hook = model.register_forward_pre_hook(before, with_kwargs=True)

    def check_step_inputs(self, arguments: dict[str, Any]) -> None:
        """Refuse forward `arguments` that are not the inputs the current step's entries were made from."""
        keys = self._current_keys
        given = row_hashes(arguments, len(keys), self.reader.shared_inputs)
        for key, digest in zip(keys, given):
            if digest != self.reader.input_hash(key):
                raise BankError(
                    f"bank entry {key!r} was made from other inputs than this step feeds the model: the images, "
                    "captions or input settings changed since the precompute, or the batch is not the schedule's. "
                    "Re-run the precompute for these inputs (into a new folder), or feed the bank's inputs"
                )

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
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._executor.shutdown(wait=False, cancel_futures=True)
