"""What the routers need from the model's own call rather than from a block's: the text length
(for blocks that take the joint sequence) and, for timestep-only routers, the timestep.

DyDiT's width routers read the timestep embedding alone, so a mask depends only on t and can be
computed once per sampling step. A diffusers block's `temb` also mixes in guidance and pooled
text. With `DynamicSettings(router_input="timestep")` the routers instead read fixed sinusoidal
features of the timestep the model was called with, on one 0–1000 scale: FLUX.1, FLUX.2, Chroma,
QwenImage, AuraFlow and Lumina2 take t in [0, 1] (all but Lumina2 multiply it by 1000 inside),
so we multiply theirs by 1000; the other families take it on 0–1000 already.

    >>> import torch
    >>> timestep_features(torch.tensor([0.0, 500.0]), 8).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from torch import nn

_TIMESTEP_SCALE = {name: 1000.0 for name in ("FluxTransformer2DModel", "Flux2Transformer2DModel", "ChromaTransformer2DModel",
                                               "QwenImageTransformer2DModel", "AuraFlowTransformer2DModel", "Lumina2Transformer2DModel")}


def timestep_features(timestep: torch.Tensor, width: int, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) timesteps on the 0–1000 scale -> (B, width) [cos ‖ sin] features at geometric frequencies."""
    half = width // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


@dataclass
class ModelCall:
    """The current call's text length and (timestep routers only) timestep features."""

    text_tokens: int = 0
    features: torch.Tensor | None = None


def call_recorder(model: nn.Module, call: ModelCall, *, text: bool, timestep_width: int | None):
    """A forward pre-hook for `model` that fills `call` from its arguments."""
    signature, name = inspect.signature(model.forward), type(model).__name__
    scale = _TIMESTEP_SCALE.get(name, 1.0)

    def record(module, args, kwargs):
        arguments = signature.bind_partial(*args, **kwargs).arguments
        if text:
            hidden = arguments.get("encoder_hidden_states")
            if hidden is None:
                raise RuntimeError(f"{name}'s blocks take the joint sequence: dynamic tokens need "
                                   "encoder_hidden_states passed to the model to know which rows are text")
            call.text_tokens = hidden.shape[1]
        if timestep_width is not None:
            timestep = arguments.get("timestep")
            if timestep is None:
                raise RuntimeError(f"timestep routers need the timestep passed to {name}")
            hidden = arguments["hidden_states"]
            call.features = timestep_features(_per_sample(timestep, hidden.shape[0]).to(hidden.device) * scale, timestep_width)

    return record


def _per_sample(timestep: torch.Tensor, batch: int) -> torch.Tensor:
    """(B,) from a scalar, a (B,) tensor or a per-token (B, N) one (averaged over the tokens)."""
    timestep = torch.as_tensor(timestep)
    if timestep.ndim >= 2:
        timestep = timestep.float().flatten(1).mean(dim=1)
    timestep = timestep.reshape(-1)
    return timestep.expand(batch) if timestep.numel() == 1 else timestep
