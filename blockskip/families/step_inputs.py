"""What a training step feeds a model: forward arguments and the regression target, per family.

Each supported family gets the arguments its diffusers training script or pipeline passes — packed
latent tokens and position ids for FLUX.1 and FLUX.2, a latent image for SD3, Sana, Lumina2 and
AuraFlow, a latent video for Wan, HunyuanVideo and CogVideoX, patchified video tokens for
LTX-Video — sized from the training resolution, frame count, text length and batch size. The
builders live in `blockskip.families.image_inputs` and `blockskip.families.video_inputs`. Tensors are made with
ordinary factory functions, so under `FakeTensorMode` they are fake and cost nothing.

| family | pixels per token (spatial) | frames per latent frame | text default |
|---|---|---|---|
| FLUX.1, Chroma, QwenImage | 16 (VAE 8 × 2×2 packing) | — | 512 |
| FLUX.2 | 16 (VAE 8 × 2×2 packing) | — | 512 (Mistral / Qwen3) |
| SD3 / SD3.5 | 16 (VAE 8 × patch 2) | — | 333 (77 CLIP + 256 T5) |
| Sana | 32 (DC-AE 32 × patch 1) | — | 300 |
| Lumina 2 | 16 (VAE 8 × patch 2) | — | 256 (Gemma) |
| AuraFlow | 16 (VAE 8 × patch 2) | — | 256 (Pile-T5) |
| Wan 2.1, HunyuanVideo | 16 (VAE 8 × patch 2) | 4 | 512 / 256 |
| CogVideoX | 16 (VAE 8 × patch 2) | 4 | 226 (T5) |
| LTX-Video | 32 (VAE 32 × patch 1) | 8 | 128 |

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> kwargs, target = training_inputs(model, StepShape(height=64, width=64, text_length=5))
    >>> kwargs["hidden_states"].shape, kwargs["encoder_hidden_states"].shape, target.shape
    (torch.Size([1, 16, 8]), torch.Size([1, 5, 16]), torch.Size([1, 16, 8]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import image_inputs as image
from . import video_inputs as video


@dataclass(frozen=True)
class StepShape:
    """The data side of a training step. `frames` only matters for video models."""

    height: int
    width: int
    text_length: int
    batch_size: int = 1
    frames: int | None = None


@dataclass(frozen=True)
class Family:
    pixels_per_token: int
    text_length: int
    frames_per_latent: int | None
    build: Callable[[nn.Module, StepShape, torch.dtype], tuple[dict[str, Any], tuple[int, ...]]]


FAMILIES: dict[str, Family] = {
    "FluxTransformer2DModel": Family(16, 512, None, image.flux),
    "ChromaTransformer2DModel": Family(16, 512, None, image.flux),
    "Flux2Transformer2DModel": Family(16, 512, None, image.flux2),
    "QwenImageTransformer2DModel": Family(16, 512, None, image.qwen),
    "SD3Transformer2DModel": Family(16, 333, None, image.sd3),
    "SanaTransformer2DModel": Family(32, 300, None, image.sana),
    "Lumina2Transformer2DModel": Family(16, 256, None, image.lumina2),
    "AuraFlowTransformer2DModel": Family(16, 256, None, image.auraflow),
    "WanTransformer3DModel": Family(16, 512, 4, video.wan),
    "HunyuanVideoTransformer3DModel": Family(16, 256, 4, video.hunyuan),
    "CogVideoXTransformer3DModel": Family(16, 226, 4, video.cogvideox),
    "LTXVideoTransformer3DModel": Family(32, 128, 8, video.ltx),
}


def family_of(model: nn.Module | str) -> Family:
    """The input recipe for a model (or class name); a clear error lists the supported ones."""
    name = model if isinstance(model, str) else type(model).__name__
    family = FAMILIES.get(name)
    if family is None:
        raise LookupError(
            f"blockskip cannot build training inputs for {name}; the estimator supports {', '.join(FAMILIES)}"
        )
    return family


def check_shape(model: nn.Module | str, shape: StepShape) -> None:
    """Refuse sizes the model cannot take: sides off its token grid, frame counts off its VAE's."""
    family = family_of(model)
    for side, value in (("height", shape.height), ("width", shape.width)):
        if value <= 0 or value % family.pixels_per_token:
            raise ValueError(f"{side} {value} is not a positive multiple of {family.pixels_per_token} pixels")
    if family.frames_per_latent is not None:
        frames = shape.frames
        if frames is None or frames < 1 or (frames - 1) % family.frames_per_latent:
            raise ValueError(
                f"frames {frames} must be 1 + a multiple of {family.frames_per_latent} for this video model"
            )
    if shape.text_length < 1 or shape.batch_size < 1:
        raise ValueError("text_length and batch_size must be >= 1")


def training_inputs(model: nn.Module, shape: StepShape, dtype: torch.dtype | None = None) -> tuple[dict, torch.Tensor]:
    """Forward kwargs (with `return_dict=False`) and a target shaped like the model's output."""
    check_shape(model, shape)
    if dtype is None:
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    kwargs, target_shape = family_of(model).build(model, shape, dtype)
    kwargs["return_dict"] = False
    return kwargs, torch.randn(*target_shape, dtype=dtype)
