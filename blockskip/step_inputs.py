"""What a training step feeds a model: forward arguments and the regression target, per family.

Each supported family gets the arguments its diffusers training script or pipeline passes — packed
latent tokens and position ids for FLUX, a latent image for SD3 and Sana, a latent video for Wan
and HunyuanVideo, patchified video tokens for LTX-Video — sized from the training resolution,
frame count, text length and batch size. Tensors are made with ordinary factory functions, so
under `FakeTensorMode` they are fake and cost nothing.

| family | pixels per token (spatial) | frames per latent frame | text default |
|---|---|---|---|
| FLUX.1, Chroma, QwenImage | 16 (VAE 8 × 2×2 packing) | — | 512 |
| SD3 / SD3.5 | 16 (VAE 8 × patch 2) | — | 333 (77 CLIP + 256 T5) |
| Sana | 32 (DC-AE 32 × patch 1) | — | 300 |
| Wan 2.1, HunyuanVideo | 16 (VAE 8 × patch 2) | 4 | 512 / 256 |
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


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def _timesteps(batch: int, scale: float) -> torch.Tensor:
    return torch.rand(batch) * scale


def _grid(shape: StepShape, pixels: int) -> tuple[int, int]:
    return shape.height // pixels, shape.width // pixels


def _latent_frames(shape: StepShape, per_latent: int) -> int:
    return (shape.frames - 1) // per_latent + 1


def _flux_ids(h: int, w: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.zeros(h, w, 3)
    image[..., 1] = torch.arange(h)[:, None]
    image[..., 2] = torch.arange(w)[None, :]
    return torch.zeros(text_length, 3), image.reshape(h * w, 3)


def _flux(model, shape, dtype):
    c, (h, w), batch = model.config, _grid(shape, 16), shape.batch_size
    txt_ids, img_ids = _flux_ids(h, w, shape.text_length)
    kwargs = dict(
        hidden_states=_randn(batch, h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        timestep=_timesteps(batch, 1.0).to(dtype),
        img_ids=img_ids,
        txt_ids=txt_ids,
    )
    if "pooled_projection_dim" in c:
        kwargs["pooled_projections"] = _randn(batch, c.pooled_projection_dim, dtype=dtype)
    if c.get("guidance_embeds", False):
        kwargs["guidance"] = torch.full((batch,), 3.5, dtype=dtype)
    return kwargs, (batch, h * w, c.out_channels or c.in_channels)


def _sd3(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        pooled_projections=_randn(batch, c.pooled_projection_dim, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
    )
    return kwargs, (batch, c.out_channels, h, w)


def _sana(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 32, shape.width // 32
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.caption_channels, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, shape.text_length, dtype=torch.long),
        timestep=_timesteps(batch, 1000.0),
    )
    return kwargs, (batch, c.out_channels, h, w)


def _qwen(model, shape, dtype):
    c, (h, w), batch = model.config, _grid(shape, 16), shape.batch_size
    kwargs = dict(
        hidden_states=_randn(batch, h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        encoder_hidden_states_mask=torch.ones(batch, shape.text_length, dtype=torch.long),
        timestep=_timesteps(batch, 1.0).to(dtype),
        img_shapes=[[(1, h, w)]] * batch,
    )
    return kwargs, (batch, h * w, c.patch_size**2 * c.out_channels)


def _wan(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    frames, h, w = _latent_frames(shape, 4), shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, frames, h, w, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_hidden_states=_randn(batch, shape.text_length, c.text_dim, dtype=dtype),
    )
    return kwargs, (batch, c.out_channels, frames, h, w)


def _hunyuan(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    frames, h, w = _latent_frames(shape, 4), shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, frames, h, w, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_hidden_states=_randn(batch, shape.text_length, c.text_embed_dim, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, shape.text_length, dtype=torch.long),
        pooled_projections=_randn(batch, c.pooled_projection_dim, dtype=dtype),
    )
    if c.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 6000.0, dtype=dtype)
    return kwargs, (batch, c.out_channels, frames, h, w)


def _ltx(model, shape, dtype):
    c, (h, w), batch = model.config, _grid(shape, 32), shape.batch_size
    frames = _latent_frames(shape, 8)
    kwargs = dict(
        hidden_states=_randn(batch, frames * h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.caption_channels, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_attention_mask=torch.ones(batch, shape.text_length, dtype=torch.long),
        num_frames=frames,
        height=h,
        width=w,
        rope_interpolation_scale=(8 / 25, 32.0, 32.0),
    )
    return kwargs, (batch, frames * h * w, c.out_channels)


FAMILIES: dict[str, Family] = {
    "FluxTransformer2DModel": Family(16, 512, None, _flux),
    "ChromaTransformer2DModel": Family(16, 512, None, _flux),
    "QwenImageTransformer2DModel": Family(16, 512, None, _qwen),
    "SD3Transformer2DModel": Family(16, 333, None, _sd3),
    "SanaTransformer2DModel": Family(32, 300, None, _sana),
    "WanTransformer3DModel": Family(16, 512, 4, _wan),
    "HunyuanVideoTransformer3DModel": Family(16, 256, 4, _hunyuan),
    "LTXVideoTransformer3DModel": Family(32, 128, 8, _ltx),
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
