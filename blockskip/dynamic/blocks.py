"""Where a transformer block's heads, MLP channel groups and image tokens can be gated.

Each supported block class gets a `BlockSite`. It finds the attention module (its heads), the
layers whose input holds the per-head attention outputs, and the MLP (split into as many channel
groups as there are heads, as DyDiT does). It also says how to gate them with forward hooks:

- heads: the attention output is multiplied per head before the output projection. In FLUX
  double blocks and SD3 blocks that is `to_out` and `to_add_out`, one mask for both streams of
  the joint attention. In FLUX single blocks it is the attention part of `proj_out`'s input.
- MLP groups: the MLP's hidden activations are multiplied per group before its last Linear.
  GELU(0) = 0, so gating after the activation equals gating before it. In FLUX single blocks this
  is the MLP part of `proj_out`'s input. The text-stream MLP (`ff_context`) runs at full width.
- tokens: an image token's MLP output is multiplied by its 0/1 gate, so a closed token bypasses
  the MLP on the residual. In FLUX single blocks only the MLP part of a closed image token's
  `proj_out` input is dropped; its attention output still passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

SUPPORTED_BLOCKS = ("FluxTransformerBlock", "FluxSingleTransformerBlock", "JointTransformerBlock")


@dataclass
class BlockSite:
    block: nn.Module
    kind: str  # "double" (separate streams, to_out / ff) or "single" (FLUX: fused proj_out)
    heads: int
    head_dim: int
    width: int  # model width D
    mlp_width: int
    head_outputs: tuple[nn.Module, ...]  # layers whose input is the concatenated head outputs (double)
    mlp_output: nn.Module  # the MLP's last Linear (double) or proj_out (single)
    mlp_module: nn.Module  # whose output is the image-stream MLP update (double) / proj_mlp (single)

    @property
    def groups(self) -> int:
        return self.heads


def block_site(block: nn.Module) -> BlockSite:
    """The gating points of a supported block; other blocks are refused by name."""
    name = type(block).__name__
    if name not in SUPPORTED_BLOCKS:
        raise TypeError(f"dynamic width and tokens support {', '.join(SUPPORTED_BLOCKS)} blocks, not {name}")
    attn = block.attn
    heads = attn.heads
    head_dim = attn.to_q.out_features // heads if hasattr(attn.to_q, "out_features") else attn.inner_dim // heads
    if name == "FluxSingleTransformerBlock":
        mlp_width = block.proj_mlp.out_features
        return BlockSite(block, "single", heads, head_dim, block.proj_out.out_features, mlp_width,
                         (), block.proj_out, block.proj_mlp)
    outputs = [attn.to_out[0]]
    if getattr(attn, "to_add_out", None) is not None:
        outputs.append(attn.to_add_out)
    ff = block.ff
    last = ff.net[2]
    return BlockSite(block, "double", heads, head_dim, last.out_features, last.in_features, tuple(outputs), last, ff)


def block_costs(site: BlockSite, image_tokens: int, text_tokens: int) -> tuple[float, float]:
    """(attention, MLP) multiply-adds of one call for one sample, the parts the gates scale.

    Attention: the q, k, v and output projections of both streams plus the two attention matmuls
    over the joint sequence. MLP: the image-stream MLP (plus, in single blocks, the MLP share of
    `proj_out`). The text-stream MLP and the norms are not gated and not counted, as in DyDiT.
    """
    tokens = image_tokens + text_tokens
    inner = site.heads * site.head_dim
    attention = 4 * tokens * site.width * inner + 2 * tokens * tokens * inner
    mlp = 2 * image_tokens * site.width * site.mlp_width
    return float(attention), float(mlp)
