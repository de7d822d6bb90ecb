"""Memory trades for the kept blocks: gradient checkpointing, fp8 weight storage, group offload.

A plan's `kept_blocks` section asks for them; `apply_memory_trades(model)` applies them. Call it
**after** `add_adapter`: fp8 storage must leave the LoRA weights alone, and diffusers' layer
casting only can when the LoRA layers already exist (the other order casts LoRA to fp8 and the
forward fails). The full order is

    apply_block_skip(model, plan)      # 1. skip, before add_adapter and before .to("cuda")
    model.to("cuda")                   # 2. kept blocks to the GPU (skipped ones stay on the CPU)
    model.add_adapter(lora_config)     # 3. LoRA, only in kept blocks
    apply_memory_trades(model)         # 4. the plan's kept_blocks trades

| trade | what it does | built on |
|---|---|---|
| `gradient_checkpointing` | kept blocks recompute their activations in backward | `model.enable_gradient_checkpointing()` |
| `storage_dtype` (fp8) | kept blocks' frozen Linear weights stored in fp8, upcast one layer at a time | `diffusers.hooks.apply_layerwise_casting`, skipping `lora`, the class's own skip patterns (norms, embedders) and non-Linear layers |
| `group_offload` | kept blocks' frozen Linear weights wait on the CPU, streamed to the GPU layer by layer with prefetch on a side stream | `diffusers.hooks.apply_group_offloading` (leaf level, CUDA streams), shown only the frozen Linear weights |

Only Linear weights are traded: autograd keeps a view of a Linear's weight for backward, which
survives the weight being recast or moved, while convolutions and norms keep the parameter itself
(Sana's convolutional feed-forward with fp8 storage and checkpointing fails in backward otherwise).

Without checkpointing, fp8 storage and offloading save little during training: autograd keeps
the upcast (or onloaded) copy of every weight it needs for backward until backward reaches it.
`blockskip estimate` shows the numbers; `blockskip plan` pairs them with checkpointing.

Example:
    >>> from peft import LoraConfig
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import apply_block_skip, apply_memory_trades
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, {"skip": {"leading": 1, "trailing": 1},
    ...     "kept_blocks": {"gradient_checkpointing": True, "storage_dtype": "float8_e4m3fn"}})
    >>> model.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"]))
    >>> trades = apply_memory_trades(model)
    >>> trades.fp8_layers > 0, model.transformer_blocks[1].attn.to_q.base_layer.weight.dtype
    (True, torch.float8_e4m3fn)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .plan import BlockSkipPlan, KeptBlockSettings
from .skip import BlockSkipError, get_block_skip

TRADES_ATTRIBUTE = "_blockskip_trades"
LORA_PATTERN = "lora"


@dataclass(frozen=True)
class MemoryTrades:
    """What `apply_memory_trades` did."""

    settings: KeptBlockSettings
    fp8_layers: int = 0
    offloaded_layers: int = 0

    def summary(self) -> str:
        parts = []
        if self.settings.gradient_checkpointing:
            parts.append("gradient checkpointing")
        if self.settings.storage_dtype:
            parts.append(f"{self.settings.storage_dtype} storage ({self.fp8_layers} layers)")
        if self.settings.group_offload:
            parts.append(f"group offload ({self.offloaded_layers} layers)")
        return ", ".join(parts) or "none"


def kept_blocks(model: nn.Module) -> list[nn.Module]:
    """The kept (trained) blocks of a skipped model, in execution order."""
    handle = get_block_skip(model)
    if handle is None:
        raise BlockSkipError("memory trades apply to the kept blocks: call apply_block_skip first")
    return [model.get_submodule(name) for name in handle.kept_block_names()]


def has_lora(module: nn.Module) -> bool:
    return any(LORA_PATTERN + "_" in name for name, _ in module.named_parameters())


def _frozen_leaves(block: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The Linear layers outside LoRA: the layers whose weights are traded.

    Only Linear layers: autograd saves a *view* of a Linear's weight for backward, which a later
    `.data` swap (fp8 recast, offload) leaves alone. Convolutions and norms save the parameter
    itself, so swapping its data under them breaks backward (checkpointing refuses the recomputed
    fp8 weight; offloading would hand backward a CPU tensor).
    """
    for name, module in block.named_modules():
        if LORA_PATTERN not in name and isinstance(module, nn.Linear):
            yield name, module


def _non_linear_layers() -> tuple[type, ...]:
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    return tuple(layer for layer in _GO_LC_SUPPORTED_PYTORCH_LAYERS if not issubclass(layer, nn.Linear))


def skip_patterns(model: nn.Module) -> tuple[str, ...]:
    """Module-name patterns fp8 storage leaves alone: the class's own plus `lora`."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    own = getattr(model, "_skip_layerwise_casting_patterns", None) or DEFAULT_SKIP_MODULES_PATTERN
    return tuple(own) + (LORA_PATTERN,)


def cast_kept_blocks(model: nn.Module, storage_dtype: torch.dtype) -> int:
    """fp8 storage with per-layer upcast for the kept blocks; returns the number of cast layers."""
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.hooks.hooks import HookRegistry

    patterns = skip_patterns(model)
    count = 0
    for block in kept_blocks(model):
        reference = next((p for p in block.parameters() if p.is_floating_point() and not p.requires_grad), None)
        if reference is None:
            continue
        apply_layerwise_casting(
            block, storage_dtype, reference.dtype, skip_modules_pattern=patterns, skip_modules_classes=_non_linear_layers()
        )
        count += sum(
            1
            for module in block.modules()
            if getattr(module, "_diffusers_hook", None) is not None
            and isinstance(module._diffusers_hook, HookRegistry)
            and module._diffusers_hook.get_hook("layerwise_casting") is not None
        )
    return count


@contextmanager
def _only_frozen_linear_weights(block: nn.Module) -> Iterator[None]:
    """For the duration, `block` shows only its frozen Linear weights (so offloading takes only those).

    LoRA submodules leave the tree; every other module's own parameters and buffers are set aside.
    """
    saved = []
    for module in list(block.modules()):
        children = dict(module._modules)
        parameters, buffers = dict(module._parameters), dict(module._buffers)
        saved.append((module, children, parameters, buffers))
        for name in [name for name in module._modules if name.startswith(LORA_PATTERN + "_")]:
            del module._modules[name]
        if not isinstance(module, nn.Linear):
            module._parameters.clear()
            module._buffers.clear()
    try:
        yield
    finally:
        for module, children, parameters, buffers in saved:
            module._modules.clear()
            module._modules.update(children)
            module._parameters.clear()
            module._parameters.update(parameters)
            module._buffers.clear()
            module._buffers.update(buffers)


def offload_kept_blocks(
    model: nn.Module, onload_device: torch.device, offload_device: torch.device, use_stream: bool
) -> int:
    """Group offloading (leaf level) of the kept blocks' frozen layers; LoRA stays where it is.

    One call per kept block: within a block the next layer is prefetched on a side stream while
    the current one runs. Only Linear weights move (see `_frozen_leaves`); norms, convolutions and
    LoRA stay where they are. Returns the number of offloaded layers.
    """
    from diffusers.hooks import apply_group_offloading

    count = 0
    for block in kept_blocks(model):
        layers = sum(1 for _ in _frozen_leaves(block))
        with _only_frozen_linear_weights(block):
            if layers == 0:
                continue
            apply_group_offloading(
                block,
                onload_device=onload_device,
                offload_device=offload_device,
                offload_type="leaf_level",
                use_stream=use_stream,
            )
        count += layers
    return count


def _kept_device(model: nn.Module) -> torch.device:
    for block in kept_blocks(model):
        for parameter in block.parameters():
            return parameter.device
    return torch.device("cpu")


def apply_memory_trades(model: nn.Module, plan: BlockSkipPlan | dict | None = None) -> MemoryTrades:
    """Apply the plan's `kept_blocks` trades to a skipped model, after `add_adapter`.

    `plan` defaults to the plan `apply_block_skip` was given. Group offload needs the kept blocks
    on a CUDA device. fp8 storage is lossy and, like diffusers' own layer casting, is not undone
    by `remove_block_skip`.
    """
    handle = get_block_skip(model)
    if handle is None:
        raise BlockSkipError("apply_memory_trades needs a model with apply_block_skip applied")
    if getattr(model, TRADES_ATTRIBUTE, None) is not None:
        raise BlockSkipError("memory trades are already applied to this model")
    if isinstance(plan, dict):
        plan = BlockSkipPlan.from_dict(plan)
    settings = (plan or handle.plan).kept_blocks
    if (settings.storage_dtype or settings.group_offload) and not has_lora(model):
        raise BlockSkipError(
            "apply_memory_trades found no LoRA weights: call it after add_adapter, so that fp8 storage "
            "and offloading leave the LoRA weights alone"
        )
    if settings.group_offload:
        device = _kept_device(model)
        if device.type != "cuda":
            raise BlockSkipError(
                f"kept_blocks.group_offload streams weights to a CUDA device, but the kept blocks are on {device}; "
                "move the model to the GPU before apply_memory_trades, or drop group_offload"
            )

    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    fp8_layers = cast_kept_blocks(model, getattr(torch, settings.storage_dtype)) if settings.storage_dtype else 0
    offloaded = 0
    if settings.group_offload:
        offloaded = offload_kept_blocks(model, _kept_device(model), torch.device("cpu"), use_stream=True)
    trades = MemoryTrades(settings, fp8_layers, offloaded)
    setattr(model, TRADES_ATTRIBUTE, trades)
    return trades


def get_memory_trades(model: nn.Module) -> MemoryTrades | None:
    """What `apply_memory_trades` did to `model`, or None."""
    return getattr(model, TRADES_ATTRIBUTE, None)
