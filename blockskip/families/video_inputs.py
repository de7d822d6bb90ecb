"""Training-step inputs of the video families (see `blockskip.families.step_inputs` for the table).

Same contract as `blockskip.families.image_inputs`: `(model, shape, dtype)` in, forward kwargs and the
target's shape out. `shape.frames` are pixel frames, 1 + a multiple of the VAE's frame stride.
"""

from __future__ import annotations

import torch

from .image_inputs import _grid, _randn, _text_mask, _timesteps


def _latent_frames(shape, per_latent: int) -> int:
    return (shape.frames - 1) // per_latent + 1


def wan(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    frames, h, w = _latent_frames(shape, 4), shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, frames, h, w, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_hidden_states=_randn(batch, shape.text_length, c.text_dim, dtype=dtype),
    )
    return kwargs, (batch, c.out_channels, frames, h, w)


def hunyuan(model, shape, dtype):
    c, batch = model.config, shape.batch_size
    frames, h, w = _latent_frames(shape, 4), shape.height // 8, shape.width // 8
    kwargs = dict(
        hidden_states=_randn(batch, c.in_channels, frames, h, w, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_hidden_states=_randn(batch, shape.text_length, c.text_embed_dim, dtype=dtype),
        encoder_attention_mask=_text_mask(shape),
        pooled_projections=_randn(batch, c.pooled_projection_dim, dtype=dtype),
    )
    if c.guidance_embeds:
        kwargs["guidance"] = torch.full((batch,), 6000.0, dtype=dtype)
    return kwargs, (batch, c.out_channels, frames, h, w)


def ltx(model, shape, dtype):
    c, (h, w), batch = model.config, _grid(shape, 32), shape.batch_size
    frames = _latent_frames(shape, 8)
    kwargs = dict(
        hidden_states=_randn(batch, frames * h * w, c.in_channels, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.caption_channels, dtype=dtype),
        timestep=_timesteps(batch, 1000.0),
        encoder_attention_mask=_text_mask(shape),
        num_frames=frames,
        height=h,
        width=w,
        rope_interpolation_scale=(8 / 25, 32.0, 32.0),
    )
    return kwargs, (batch, frames * h * w, c.out_channels)


def _crop_region(grid: tuple[int, int], base_height: int, base_width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The grid resized to fit the base grid (aspect kept) and centred: CogVideoX 1.0's RoPE crop."""
    h, w = grid
    if h / w > base_height / base_width:
        height, width = base_height, int(round(base_height / h * w))
    else:
        height, width = int(round(base_width / w * h)), base_width
    top, left = int(round((base_height - height) / 2)), int(round((base_width - width) / 2))
    return (top, left), (top + height, left + width)


def _cogvideox_rope(c, frames: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (tokens, attention_head_dim), as CogVideoXPipeline prepares them."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    p, p_t = c.patch_size, c.patch_size_t
    grid = (h // p, w // p)
    base = (c.sample_height // p, c.sample_width // p)
    if p_t is None:  # 1.0: a linspace grid over the crop of the base grid
        return get_3d_rotary_pos_embed(c.attention_head_dim, _crop_region(grid, *base), grid, frames)
    return get_3d_rotary_pos_embed(  # 1.5: slices of the base grid, frames in patches of p_t
        c.attention_head_dim, None, grid, (frames + p_t - 1) // p_t, grid_type="slice", max_size=base
    )


def cogvideox(model, shape, dtype):
    """CogVideoXPipeline (and its image-to-video variant): latent video as (B, F, C, h, w), patch
    2 inside the model; latent frames padded to a multiple of `patch_size_t` (1.5); T5 features
    padded to `max_text_seq_length` (226); integer-scale timesteps in [0, 1000); RoPE cos/sin when
    the config uses rotary embeddings, else the model's sin-cos table, which spans exactly
    `max_text_seq_length` text tokens; `ofs` 2.0 for configs with an `ofs` embedding."""
    c, batch = model.config, shape.batch_size
    frames, h, w = _latent_frames(shape, 4), shape.height // 8, shape.width // 8
    if c.patch_size_t is not None:
        frames += -frames % c.patch_size_t
    if not c.use_rotary_positional_embeddings and shape.text_length != c.max_text_seq_length:
        raise ValueError(
            f"this CogVideoX config adds a sin-cos position table over exactly {c.max_text_seq_length} text "
            f"tokens (max_text_seq_length); got text_length {shape.text_length}"
        )
    if c.use_rotary_positional_embeddings and c.patch_size_t is not None:
        if h // c.patch_size > c.sample_height // c.patch_size or w // c.patch_size > c.sample_width // c.patch_size:
            raise ValueError(
                f"CogVideoX 1.5 slices its RoPE grid from the base {c.sample_height * 8}x{c.sample_width * 8} px: "
                f"{shape.height}x{shape.width} is larger"
            )
    kwargs = dict(
        hidden_states=_randn(batch, frames, c.in_channels, h, w, dtype=dtype),
        encoder_hidden_states=_randn(batch, shape.text_length, c.text_embed_dim, dtype=dtype),
        timestep=torch.randint(0, 1000, (batch,)),
    )
    if c.use_rotary_positional_embeddings:
        kwargs["image_rotary_emb"] = _cogvideox_rope(c, frames, h, w)
    if c.ofs_embed_dim:
        kwargs["ofs"] = torch.full((1,), 2.0, dtype=dtype)
    return kwargs, (batch, frames, c.out_channels, h, w)
