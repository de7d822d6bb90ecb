"""Stand-in for SimpleTuner's `FluxTransformer2DModel` copy, built on diffusers' classes.

What matters to the adapter, as upstream: the class names `FluxTransformer2DModel`,
`FluxTransformerBlock` (`forward(hidden_states, encoder_hidden_states, temb, ...)` returning
`(encoder_hidden_states, hidden_states)`) and `FluxSingleTransformerBlock`, whose
`forward(hidden_states, temb, image_rotary_emb=None, attention_mask=None, ...)` takes and returns
the joint `[text; image]` sequence that the model forward concatenates after the double blocks;
the lists `transformer_blocks` / `single_transformer_blocks`; gradient checkpointing that passes
the block arguments positionally. Weights load from a diffusers FLUX checkpoint.
"""

from typing import Any, Optional

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers import transformer_flux as diffusers_flux
from torch import nn
from torch.utils.checkpoint import checkpoint


class FluxTransformerBlock(diffusers_flux.FluxTransformerBlock):
    def forward(self, hidden_states, encoder_hidden_states, temb, context_temb=None, image_rotary_emb=None,
                attention_mask=None, checkpoint_ffn=False, checkpoint_fn=None, offload_attention=False):
        return super().forward(hidden_states, encoder_hidden_states, temb, image_rotary_emb=image_rotary_emb)


class FluxSingleTransformerBlock(diffusers_flux.FluxSingleTransformerBlock):
    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, image_rotary_emb=None,
                attention_mask: Optional[torch.Tensor] = None, checkpoint_ffn: bool = False,
                checkpoint_fn: Any = None, offload_attention: bool = False):
        _, joint = super().forward(hidden_states, hidden_states[:, :0], temb, image_rotary_emb=image_rotary_emb)
        return joint


class FluxTransformer2DModel(diffusers_flux.FluxTransformer2DModel):
    @register_to_config
    def __init__(self, patch_size=1, in_channels=64, out_channels=None, num_layers=19, num_single_layers=38,
                 attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                 guidance_embeds=False, axes_dims_rope=(16, 56, 56)):
        super().__init__(patch_size, in_channels, out_channels, num_layers, num_single_layers, attention_head_dim,
                         num_attention_heads, joint_attention_dim, pooled_projection_dim, guidance_embeds,
                         axes_dims_rope)
        dim = self.inner_dim
        heads, head_dim = self.config.num_attention_heads, self.config.attention_head_dim
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(dim, heads, head_dim) for _ in range(self.config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [FluxSingleTransformerBlock(dim, heads, head_dim) for _ in range(self.config.num_single_layers)]
        )

    def forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None, return_dict=True, **kwargs):
        hidden_states = self.x_embedder(hidden_states)
        timestep = timestep.to(hidden_states.dtype) * 1000
        guidance = guidance.to(hidden_states.dtype) * 1000 if guidance is not None else None
        temb = (self.time_text_embed(timestep, pooled_projections) if guidance is None
                else self.time_text_embed(timestep, guidance, pooled_projections))
        encoder_hidden_states = self.context_embedder(encoder_hidden_states)
        image_rotary_emb = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))
        checkpointing = self.training and self.gradient_checkpointing and torch.is_grad_enabled()
        for index_block, block in enumerate(self.transformer_blocks):
            if checkpointing:  # upstream passes the block's arguments positionally here
                encoder_hidden_states, hidden_states = checkpoint(
                    block, hidden_states, encoder_hidden_states, temb, temb, image_rotary_emb, None,
                    use_reentrant=False,
                )
            else:
                encoder_hidden_states, hidden_states = block(
                    hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb,
                    context_temb=temb, image_rotary_emb=image_rotary_emb, attention_mask=None,
                )
        txt_len = encoder_hidden_states.shape[1]
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        for index_block, block in enumerate(self.single_transformer_blocks):
            if checkpointing:
                hidden_states = checkpoint(block, hidden_states, temb, image_rotary_emb, None, use_reentrant=False)
            else:
                hidden_states = block(hidden_states=hidden_states, temb=temb, image_rotary_emb=image_rotary_emb)
        hidden_states = hidden_states[:, txt_len:, ...]
        output = self.proj_out(self.norm_out(hidden_states, temb))
        return (output,) if not return_dict else {"sample": output}
