"""Training-step inputs of the image families (see `blockskip.families.step_inputs` for the table).

Each builder takes `(model, shape, dtype)` and returns the forward kwargs its diffusers pipeline
passes, plus the shape of the regression target (the model's output). Facts taken from the
diffusers 0.42 pipelines, per builder.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor


def _randn(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype)


def _timesteps(batch: int, scale: float) -> torch.Tensor:
    return torch.rand(batch) * scale


def _grid(shape, pixels: int) -> tuple[int, int]:
    return shape.height // pixels, shape.width // pixels


def _text_mask(shape) -> torch.Tensor:
    """Every text token valid: the text length is the padded one the training step pays for."""
    return torch.ones(shape.batch_size, shape.text_length, dtype=torch.long)


def _flux_ids(h: int, w: int, text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.zeros(h, w, 3)
    image[..., 1] = torch.arange(h)[:, None]
    image[..., 2] = torch.arange(w)[None, :]
    return torch.zeros(text_length, 3), image.reshape(h * w, 3)


def flux(model, shape, dtype):
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


def flux2(model, shape, dtype):
    """Flux2Pipeline / Flux2KleinPipeline: 2×2-patchified latents packed to (B, h·w, 4·32) tokens,
    4-axis position ids (t, h, w, l) — image (0, row, col, 0), text (0, 0, 0, index) — batched,
    `timestep / 1000`, guidance 4.0 only for guidance-embedding checkpoints (Klein passes None)."""
    c, (h, w), batch, length = model.config, _grid(shape, 16), shape.batch_size, shape.text_length
    img_ids = torch.zeros(h, w, 4)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    txt_ids = torch.zeros(length, 4)
    txt_ids[:, 3] = torch.arange(length)
    kwargs = dict(
        hidden_states=_randn(batch, h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, length, c.joint_attention_dim, dtype=dtype),
        timestep=_timesteps(batch, 1.0).to(dtype),
        img_ids=img_ids.reshape(1, h * w, 4).expand(batch, -1, -1),
        txt_ids=txt_ids.reshape(1, length, 4).expand(batch, -1, -1),
    )
    if c.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 4.0, dtype=dtype)
    return kwargs, (batch, h * w, c.out_channels or c.in_channels)


def sd3(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        pooled_projections=_randn(batch, c.pooled_projection_dim, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
    )
    return kwargs, (batch, c.out_channels, h, w)


def sana(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 32, shape.width // 32
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.caption_channels, dtype=dtype),
        encoder_attention_mask=_text_mask(shape),
        timestep=_timesteps(batch, 1000.0),
    )
    return kwargs, (batch, c.out_channels, h, w)


def qwen(model, shape, dtype):
    c, (h, w), batch = model.config, _grid(shape, 16), shape.batch_size
    kwargs = dict(
        hidden_states=_randn(batch, h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        encoder_hidden_states_mask=_text_mask(shape),
        timestep=_timesteps(batch, 1.0).to(dtype),
        img_shapes=[[(1, h, w)]] * batch,
    )
    return kwargs, (batch, h * w, c.patch_size**2 * c.out_channels)


def _full_mask_lengths(module) -> None:
    """Lumina2's RoPE embedder turns the mask's row sums into Python ints (`.tolist()`), which a
    fake tensor cannot give. On a fake model, give it the lengths of the all-ones mask the
    builder passes; a real model is left alone."""
    if "forward" in module.__dict__:
        return
    original = type(module).forward

    def forward(hidden_states, attention_mask):
        if isinstance(attention_mask, FakeTensor):
            attention_mask = _FullLengths(*attention_mask.shape)
        return original(module, hidden_states, attention_mask)

    module.forward = forward


class _FullLengths:
    """`.shape`, and `.sum(dim=1).tolist()` of an all-ones (batch, length) mask."""

    def __init__(self, batch: int, length: int) -> None:
        self.shape = torch.Size((batch, length))

    def sum(self, dim: int) -> "_FullLengths":
        assert dim == 1
        return self

    def tolist(self) -> list[int]:
        return [self.shape[1]] * self.shape[0]


def lumina2(model, shape, dtype):
    """Lumina2Pipeline: the latent image (patch 2 inside the model), Gemma features with their mask,
    timestep `1 - t / 1000` in [0, 1]. Text positions run along RoPE axis 0, image rows and columns
    along axes 1 and 2, so the text and the grid must fit `axes_lens`."""
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 8, shape.width // 8
    p = c.patch_size
    lens = c.axes_lens
    if shape.text_length >= lens[0] or h // p > lens[1] or w // p > lens[2]:
        raise ValueError(
            f"{shape.text_length} text tokens and a {h // p}x{w // p} grid exceed the model's RoPE "
            f"axes_lens {tuple(lens)} (text < {lens[0]})"
        )
    if any(isinstance(t, FakeTensor) for t in model.parameters()):
        _full_mask_lengths(model.rope_embedder)
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        timestep=_timesteps(batch, 1.0).to(dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.cap_feat_dim, dtype=dtype),
        encoder_attention_mask=_text_mask(shape),
    )
    return kwargs, (batch, c.out_channels or c.in_channels, h, w)


def auraflow(model, shape, dtype):
    """AuraFlowPipeline: the latent image (patch 2 inside the model), Pile-T5 features (already
    multiplied by their mask; none is passed), timestep `t / 1000` in [0, 1]. The learned position
    table is a square grid of `pos_embed_max_size` entries: larger grids do not fit."""
    c, batch = model.config, shape.batch_size
    h, w = shape.height // 8, shape.width // 8
    side = int(c.pos_embed_max_size**0.5)
    if h // c.patch_size > side or w // c.patch_size > side:
        raise ValueError(
            f"a {h // c.patch_size}x{w // c.patch_size} token grid exceeds the model's {side}x{side} "
            f"position table (pos_embed_max_size {c.pos_embed_max_size}): at most {side * c.patch_size * 8} px a side"
        )
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.joint_attention_dim, dtype=dtype),
        timestep=_timesteps(batch, 1.0).to(dtype),
    )
    return kwargs, (batch, c.out_channels, h, w)
