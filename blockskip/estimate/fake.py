"""Full-size models whose tensors do not exist: meta construction, then fake tensors.

A model is built on the `meta` device from its config (nothing allocated), then every parameter
and buffer is replaced by a fresh `FakeTensor` of the dtype training would use. Fake tensors
carry shapes, dtypes and storages but no data, so a whole training step runs on them —
forward, backward, optimizer — in seconds, and `blockskip.estimate.accounting` counts what it keeps alive.

Two things differ from real tensors and are handled here:

- `module.to(dtype)` refuses fake parameters ("Couldn't swap"): torch swaps a fake parameter's
  whole object instead of assigning `.data`. The models built here get a per-instance `_apply`
  that assigns `.data`, which is what real tensors get (diffusers' fp8 layer casting calls
  `module.to` on every forward).
- dtypes follow `from_pretrained(torch_dtype=...)`: floating-point tensors take the training
  dtype, except modules the class keeps in fp32 (`_keep_in_fp32_modules`) and float64 buffers.

Example:
    >>> import torch
    >>> from torch._subclasses.fake_tensor import FakeTensorMode
    >>> config = {"_class_name": "FluxTransformer2DModel", "num_layers": 19, "num_single_layers": 38}
    >>> with FakeTensorMode() as mode:
    ...     model = fake_model(config, torch.bfloat16, mode)
    >>> sum(p.numel() for p in model.parameters()) // 10**8, model.x_embedder.weight.dtype
    (118, torch.bfloat16)
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ..skipping.inspection import model_from_config


def _keep_fp32(keep: tuple[str, ...], name: str) -> bool:
    parts = name.split(".")
    return any(module in parts for module in keep)


def _fake_like(tensor: torch.Tensor, dtype: torch.dtype, mode: FakeTensorMode) -> torch.Tensor:
    with mode:
        return torch.empty(tensor.shape, dtype=dtype, device="cpu")


def _assigning_apply(self: nn.Module, fn, recurse: bool = True) -> nn.Module:
    """`nn.Module._apply` as real tensors get it: new values go into `.data`, objects stay."""
    if recurse:
        for child in self.children():
            child._apply(fn)
    for parameter in self._parameters.values():
        if parameter is None:
            continue
        with torch.no_grad():
            parameter.data = fn(parameter)
        if parameter.grad is not None:
            with torch.no_grad():
                parameter.grad.data = fn(parameter.grad)
    for key, buffer in self._buffers.items():
        if buffer is not None:
            self._buffers[key] = fn(buffer)
    return self


def allow_fake_moves(model: nn.Module) -> None:
    """Let `.to(dtype/device)` work on every module of a fake model (see module docs).

    Call it again after adding modules (PEFT's LoRA layers).
    """
    for module in model.modules():
        if "_apply" not in module.__dict__:
            module._apply = types.MethodType(_assigning_apply, module)


def fakeify(
    model: nn.Module, dtype: torch.dtype, mode: FakeTensorMode, keep_in_fp32: tuple[str, ...] | None = None
) -> nn.Module:
    """Replace every parameter and buffer of `model` (usually on `meta`) by a fake CPU tensor.

    Floating-point tensors become `dtype`, except float64 buffers and modules named in
    `keep_in_fp32` (default: the model class's `_keep_in_fp32_modules`). Tied parameters stay
    tied. Returns `model`, changed in place.
    """
    keep = tuple(keep_in_fp32 if keep_in_fp32 is not None else getattr(model, "_keep_in_fp32_modules", None) or ())
    replaced: dict[int, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for name, parameter in list(module._parameters.items()):
            if parameter is None:
                continue
            if id(parameter) not in replaced:
                full_name = f"{module_name}.{name}" if module_name else name
                target = parameter.dtype
                if parameter.is_floating_point() and parameter.dtype != torch.float64:
                    target = torch.float32 if _keep_fp32(keep, full_name) else dtype
                fake = _fake_like(parameter, target, mode)
                replaced[id(parameter)] = nn.Parameter(fake, requires_grad=parameter.requires_grad)
            module._parameters[name] = replaced[id(parameter)]
        for name, buffer in list(module._buffers.items()):
            if buffer is None:
                continue
            full_name = f"{module_name}.{name}" if module_name else name
            target = buffer.dtype
            if buffer.is_floating_point() and buffer.dtype == torch.float32 and not _keep_fp32(keep, full_name):
                target = dtype
            module._buffers[name] = _fake_like(buffer, target, mode)
        # Plain tensor attributes built on meta: QwenImage keeps its RoPE tables this way, Lumina2
        # a list of them.
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor):
                setattr(module, name, _fake_like(value, value.dtype, mode))
            elif isinstance(value, (list, tuple)) and any(
                isinstance(item, torch.Tensor) and not isinstance(item, FakeTensor) for item in value
            ):
                items = [
                    _fake_like(item, item.dtype, mode)
                    if isinstance(item, torch.Tensor) and not isinstance(item, FakeTensor) else item
                    for item in value
                ]
                setattr(module, name, type(value)(items) if isinstance(value, list) else tuple(items))
    allow_fake_moves(model)
    return model


def fake_model(config: dict[str, Any] | str | Path, dtype: torch.dtype, mode: FakeTensorMode) -> nn.Module:
    """Build the diffusers model a config describes, with fake tensors of `dtype`."""
    return fakeify(model_from_config(config), dtype, mode)
