"""SD3's transformer over a mixed-resolution token sequence.

SD3 embeds a 4-D latent with a patch convolution and adds absolute 2-D sin-cos positions cropped
from the centre of a fixed table; it cannot take a sequence whose tokens sit on two grids. This
forward does the same work per token: the patch convolution is a linear map of each token's
(channel, row, column) pixels, and the sin-cos position of a child token is evaluated at its
half-step coordinate with the table's own formula (the table only holds integer coordinates).
Low cells keep the positions a half-size image has, as in RALU's FLUX code.
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed_from_grid

from .mixed_tokens import MixedLayout


def mixed_positions(patch_embed, layout: MixedLayout, device, dtype) -> torch.Tensor:
    """(1, tokens, dim) sin-cos positions of `layout` on the grid a half-size image is cropped at."""
    size = patch_embed.pos_embed_max_size
    if size is None:
        raise NotImplementedError("RALU's mixed stage needs SD3's cropped position table (pos_embed_max_size)")
    if layout.height > size or layout.width > size:
        raise ValueError(f"a {layout.height}×{layout.width} token grid exceeds the position table ({size}×{size})")
    top, left = (size - layout.height) // 2, (size - layout.width) // 2
    rows, columns = layout.position_ids()[:, 1], layout.position_ids()[:, 2]
    step = patch_embed.base_size / size / patch_embed.interpolation_scale  # the table's coordinate per index
    grid = torch.stack([(columns + left) * step, (rows + top) * step]).reshape(2, 1, 1, -1)  # w first, as the table
    return get_2d_sincos_pos_embed_from_grid(patch_embed.pos_embed.shape[-1], grid, output_type="pt")[None].to(device, dtype)


def sd3_mixed_forward(transformer, tokens: torch.Tensor, layout: MixedLayout, timestep, encoder_hidden_states,
                      pooled_projections, joint_attention_kwargs=None, skip_layers=None, positions=None) -> torch.Tensor:
    """Velocity tokens (B, n, channels·p²) for mixed-layout tokens, p the transformer's patch size
    (`positions`: `mixed_positions` of the layout, when computed beforehand)."""
    embed = transformer.pos_embed
    if getattr(embed, "layer_norm", False):
        raise NotImplementedError("RALU's mixed stage does not support a patch embedding with layer norm")
    weight = embed.proj.weight.flatten(1)  # Conv2d(C, D, p, stride p) acting on one (C, p, p) patch
    hidden = torch.nn.functional.linear(tokens.to(weight.dtype), weight, embed.proj.bias)
    hidden = hidden + (positions if positions is not None else mixed_positions(embed, layout, hidden.device, hidden.dtype)).to(hidden)
    temb = transformer.time_text_embed(timestep, pooled_projections)
    encoder_hidden_states = transformer.context_embedder(encoder_hidden_states)
    for index, block in enumerate(transformer.transformer_blocks):
        if skip_layers is not None and index in skip_layers:
            continue
        encoder_hidden_states, hidden = block(hidden_states=hidden, encoder_hidden_states=encoder_hidden_states, temb=temb,
                                              joint_attention_kwargs=joint_attention_kwargs)
    hidden = transformer.proj_out(transformer.norm_out(hidden, temb))
    patch, channels = transformer.config.patch_size, transformer.out_channels
    # SD3 lays a token's output out as (row, column, channel); ours is (channel, row, column)
    return hidden.unflatten(-1, (patch, patch, channels)).permute(0, 1, 4, 2, 3).flatten(2)
