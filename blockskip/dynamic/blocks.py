"""Where a transformer block's heads, MLP channel groups and image tokens can be gated.

Each supported block class has a `_BlockLayout`, which gives the attribute paths of its gated
attention (its heads), the layers whose input holds the per-head attention outputs, and its
image-stream MLP. The MLP is split into as many channel groups as there are heads, as DyDiT does.
`block_site` turns these paths into a `BlockSite`, the modules themselves. The gates work
through forward hooks:

- heads: the attention output is multiplied per head before the output projection. In blocks
  with joint attention and two streams (FLUX.1, FLUX.2 and Chroma double blocks, SD3, QwenImage,
  HunyuanVideo, AuraFlow) that is `to_out` and `to_add_out`, one mask for both streams. In
  CogVideoX and AuraFlow's single blocks it is the joint `to_out`, and in Wan and LTX the
  self-attention's `to_out`; their cross-attention runs in full. In fused single blocks (FLUX.1,
  Chroma, HunyuanVideo; FLUX.2's parallel ones) it is the attention part of `proj_out`'s (FLUX.2:
  `to_out`'s) input.
- MLP groups: the MLP's hidden activations are multiplied per group before its last Linear.
  GELU(0) = 0, and SiLU(0)·v = 0 in the SwiGLU of AuraFlow and FLUX.2, so gating after the
  activation equals gating before it. In single blocks this is the MLP part of `proj_out`'s
  input. A separate text-stream MLP (`ff_context`, `txt_mlp`) runs at full width.
- tokens: an image token's MLP output is multiplied by its 0/1 gate, so a closed token bypasses
  the MLP on the residual. Where the MLP also holds the text rows (CogVideoX's joint MLP, single
  blocks) those rows always run. In single blocks only the MLP part of a closed image token's
  `proj_out` input is dropped; its attention output still passes.

The routers read the block's `temb`. Where that is a table of modulation rows (Wan, Chroma;
(B, rows, D)) they read it flattened. Where it is per token (Wan 2.2 TI2V's (B, N, rows, D), LTX's
(B, N, 6·D)) they read its mean over the tokens, since a width choice serves a whole sample.

Sana's MLP (GLUMBConv) is a 1×1 convolution to two GLU halves, a 3×3 depthwise convolution and a
1×1 convolution: its channel groups are gated like any MLP's (both halves of the first two
convolutions), but a token cannot bypass it alone, so Sana gets dynamic width only.

FLUX.2's single blocks are "parallel": one projection makes [q ‖ k ‖ v ‖ MLP value ‖ MLP gate]
and one reads [attention ‖ MLP]; they are gated like FLUX single blocks, and hard mode cuts the
fused projection's rows per part.

Lumina2 gets dynamic width only: its joint sequence puts each sample's image rows after a text
of its own length, so no one set of rows is the image in a batch. Its attention is grouped-query,
so the query heads that share a key/value head open and close together, one gate per key/value
head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..families.layouts import block_io_for


@dataclass(frozen=True)
class _BlockLayout:
    kind: str  # "double": a separate MLP module; "single": FLUX-style proj_mlp / fused proj_out; "parallel": FLUX.2's
    # single blocks, one projection to [q ‖ k ‖ v ‖ MLP halves] and one from [attention ‖ MLP]
    router_width: Callable[[nn.Module], int]  # the width of the routers' input, read from the block
    attention: str = "attn"
    head_outputs: tuple[str, ...] = ("attn.to_out.0", "attn.to_add_out")  # double only; absent ones are skipped
    mlp: str = "ff"  # double: the MLP module; single: proj_mlp
    mlp_up: tuple[str, ...] = ("ff.net.0.proj",)  # its input Linears (rows per group; two in SwiGLU); single: proj_mlp
    mlp_down: str = "ff.net.2"  # its last Linear (columns per group); single: proj_out
    joint_attention: bool = True  # the attention runs over image and text tokens together
    text_in_mlp: str | None = None  # "first" / "last": the MLP's input holds the text rows there too
    temb_per_token: bool = False  # `temb` is (B, N, C), one row per token (LTX); (B, 1, C) without per-token timesteps
    rope_on_heads: bool = False  # the attention's `image_rotary_emb` spans the flattened heads' channels (LTX)
    temb_arg: str = "temb"  # the forward argument the routers read
    linear_attention: bool = False  # Sana: attention costs N·inner·head_dim, not N²·inner
    conv_mlp: bool = False  # Sana's GLUMBConv: 1×1 conv to paired halves, 3×3 depthwise conv, gate, 1×1 conv
    fused_glu: bool = False  # the input layer makes both GLU halves [value ‖ gate] of the hidden width (Sana, FLUX.2)
    no_tokens: str | None = None  # why dynamic tokens cannot work in this block (None: they can)


def _linear_input(path: str) -> Callable[[nn.Module], int]:
    return lambda block: block.get_submodule(path).in_features


def _modulation_rows(rows: int) -> Callable[[nn.Module], int]:
    return lambda block: rows * block.get_submodule("attn").to_q.in_features


def _modulation_table(block: nn.Module) -> int:  # a block that adds `temb` to its own (…, rows, D) table
    return block.scale_shift_table.numel()


_SINGLE = dict(kind="single", mlp="proj_mlp", mlp_up=("proj_mlp",), mlp_down="proj_out")
_SWIGLU = dict(mlp_up=("ff.linear_1", "ff.linear_2"), mlp_down="ff.out_projection")

_LAYOUTS: dict[str, _BlockLayout] = {
    "FluxTransformerBlock": _BlockLayout("double", _linear_input("norm1.linear")),
    "FluxSingleTransformerBlock": _BlockLayout(router_width=_linear_input("norm.linear"), text_in_mlp="first", **_SINGLE),
    "JointTransformerBlock": _BlockLayout("double", _linear_input("norm1.linear")),
    "QwenImageTransformerBlock": _BlockLayout("double", _linear_input("img_mod.1"), mlp="img_mlp", mlp_up=("img_mlp.net.0.proj",),
                                              mlp_down="img_mlp.net.2"),
    "HunyuanVideoTransformerBlock": _BlockLayout("double", _linear_input("norm1.linear")),
    "HunyuanVideoSingleTransformerBlock": _BlockLayout(router_width=_linear_input("norm.linear"), text_in_mlp="last", **_SINGLE),
    "ChromaTransformerBlock": _BlockLayout("double", _modulation_rows(12)),
    "ChromaSingleTransformerBlock": _BlockLayout(router_width=_modulation_rows(3), text_in_mlp="first", **_SINGLE),
    "CogVideoXBlock": _BlockLayout("double", _linear_input("norm1.linear"), attention="attn1", head_outputs=("attn1.to_out.0",),
                                   text_in_mlp="first"),
    "WanTransformerBlock": _BlockLayout("double", _modulation_table, attention="attn1", head_outputs=("attn1.to_out.0",),
                                        mlp="ffn", mlp_up=("ffn.net.0.proj",), mlp_down="ffn.net.2", joint_attention=False),
    "AuraFlowJointTransformerBlock": _BlockLayout("double", _linear_input("norm1.linear"), **_SWIGLU),
    "AuraFlowSingleTransformerBlock": _BlockLayout("double", _linear_input("norm1.linear"), head_outputs=("attn.to_out.0",),
                                                   text_in_mlp="first", **_SWIGLU),
    "LTXVideoTransformerBlock": _BlockLayout("double", _modulation_table, attention="attn1", head_outputs=("attn1.to_out.0",),
                                             joint_attention=False, temb_per_token=True, rope_on_heads=True),
    "SanaTransformerBlock": _BlockLayout("double", _modulation_table, attention="attn1", head_outputs=("attn1.to_out.0",),
                                         mlp_up=("ff.conv_inverted", "ff.conv_depth"), mlp_down="ff.conv_point",
                                         joint_attention=False, temb_arg="timestep", linear_attention=True, conv_mlp=True,
                                         fused_glu=True, no_tokens="its MLP is a 3×3 depthwise convolution over the image, so a "
                                                                   "token cannot bypass it alone"),
    "Lumina2TransformerBlock": _BlockLayout("double", _linear_input("norm1.linear"), head_outputs=("attn.to_out.0",),
                                            mlp="feed_forward", mlp_up=("feed_forward.linear_1", "feed_forward.linear_3"),
                                            mlp_down="feed_forward.linear_2",
                                            no_tokens="its joint sequence puts each sample's image rows after a text of its own "
                                                      "length, so no one set of rows is the image in a batch"),
    "Flux2TransformerBlock": _BlockLayout("double", _modulation_rows(6), mlp_up=("ff.linear_in",), mlp_down="ff.linear_out",
                                          temb_arg="temb_mod_img", temb_per_token=True, fused_glu=True),
    "Flux2SingleTransformerBlock": _BlockLayout("parallel", lambda block: 3 * block.attn.query_dim, mlp="attn.to_qkv_mlp_proj",
                                                mlp_up=("attn.to_qkv_mlp_proj",), mlp_down="attn.to_out", text_in_mlp="first",
                                                temb_arg="temb_mod", temb_per_token=True, fused_glu=True),
}
SUPPORTED_BLOCKS = tuple(_LAYOUTS)


@dataclass
class BlockSite:
    block: nn.Module
    layout: _BlockLayout  # the block class's description: joint_attention, text_in_mlp, temb_arg, conv_mlp, ...
    heads: int
    head_dim: int
    head_gates: int  # heads gated together in grouped-query attention open as one: one gate per key/value head
    kv_inner: int  # width of the key and value projections
    width: int  # model width D
    mlp_width: int
    mlp_matrices: int  # the MLP's weight matrices a token runs through: 2 (GELU, single blocks) or 3 (SwiGLU)
    attention: nn.Module  # the gated (self or joint) attention
    head_outputs: tuple[nn.Module, ...]  # layers whose input is the concatenated head outputs (double)
    mlp_module: nn.Module  # the image-stream MLP (double) / proj_mlp (single)
    mlp_output: nn.Module  # the MLP's last Linear (double) or proj_out (single)
    paths: dict  # "head_outputs" (paths), "mlp", "mlp_up", "mlp_down": where hard mode swaps in slices
    router_width: int
    image_arg: str  # the forward arguments that carry the streams (`BlockIO`)
    text_arg: str | None  # None: the block takes the joint sequence, text first (Chroma single blocks)

    @property
    def groups(self) -> int:
        return self.heads

    @property
    def kind(self) -> str:
        return self.layout.kind

    def router_input(self, temb: torch.Tensor) -> torch.Tensor:
        """The block's `temb` as one (B, router_width) vector per sample (see the module docs)."""
        if temb.ndim == 4 or (self.layout.temb_per_token and temb.ndim == 3):  # per-token conditioning: its mean over the tokens
            temb = temb.float().mean(dim=1)
        return temb.float().flatten(1)

    def call_tokens(self, arguments: dict, model_text_tokens: int) -> tuple[int, int]:
        """(image, text) tokens of one call from the block's bound forward arguments; blocks that take
        the joint sequence get the text length from the model's own call."""
        rows = arguments[self.image_arg].shape[1]
        if self.text_arg is None:
            return rows - model_text_tokens, model_text_tokens
        return rows, arguments[self.text_arg].shape[1]

    def image_rows(self, hidden: torch.Tensor, text_tokens: int) -> torch.Tensor:
        """The image rows of the MLP's input (all of them unless it also holds the text)."""
        if self.layout.text_in_mlp == "first":
            return hidden[:, text_tokens:]
        if self.layout.text_in_mlp == "last":
            return hidden[:, : hidden.shape[1] - text_tokens]
        return hidden

    def with_text_rows(self, image: torch.Tensor, text_tokens: int, fill) -> torch.Tensor:
        """Image-row values (B, N_img, …) padded to the MLP's rows with `fill` for the text rows."""
        if self.layout.text_in_mlp is None:
            return image
        text = torch.full((image.shape[0], text_tokens, *image.shape[2:]), fill, dtype=image.dtype, device=image.device)
        return torch.cat([text, image] if self.layout.text_in_mlp == "first" else [image, text], dim=1)


def block_site(block: nn.Module) -> BlockSite:
    """The gating points of a supported block; other blocks are refused by name."""
    name = type(block).__name__
    layout = _LAYOUTS.get(name)
    if layout is None:
        raise TypeError(f"dynamic width and tokens support {', '.join(SUPPORTED_BLOCKS)} blocks, not {name}")
    if getattr(block, "zero_cond_t", False):
        raise TypeError(f"{name} with zero_cond_t runs two timesteps per sample; dynamic width routes one per sample")
    attn = block.get_submodule(layout.attention)
    heads = attn.heads
    head_dim = attn.to_q.out_features // heads if hasattr(attn, "to_q") else attn.head_dim
    kv_heads = attn.to_k.out_features // head_dim if hasattr(attn, "to_k") else heads
    if heads % kv_heads:
        raise TypeError(f"{name} has {heads} query heads for {kv_heads} key/value heads")
    ups, down = [block.get_submodule(path) for path in layout.mlp_up], block.get_submodule(layout.mlp_down)
    if layout.conv_mlp:  # the hidden channels are conv_point's inputs; conv_inverted and conv_depth carry them in two halves
        width, mlp_width, matrices = down.out_channels, down.in_channels, 2 + 1
    elif layout.kind == "parallel":  # to_out reads [attention ‖ MLP]; to_qkv_mlp_proj makes q, k, v and both GLU halves
        width, mlp_width, matrices = down.out_features, down.in_features - heads * head_dim, 2 + 1
    elif layout.fused_glu:
        width, mlp_width, matrices = down.out_features, down.in_features, 2 + 1
        if ups[0].out_features != 2 * mlp_width:
            raise TypeError(f"{name}'s MLP input layer should make two halves of {mlp_width}, it makes {ups[0].out_features}")
    else:
        width, mlp_width, matrices = down.out_features, ups[0].out_features, len(ups) + 1
        if layout.kind == "double" and any(up.out_features != down.in_features for up in ups):
            raise TypeError(f"{name}'s MLP fuses its gate into one input layer ({ups[0].out_features} -> {down.in_features}); "
                            "dynamic width needs one input Linear per hidden channel set")
    head_outputs = tuple(path for path in layout.head_outputs if _optional(block, path) is not None) if layout.kind == "double" else ()
    io = block_io_for(block)
    paths = {"head_outputs": head_outputs, "mlp": layout.mlp, "mlp_up": layout.mlp_up, "mlp_down": layout.mlp_down}
    return BlockSite(block, layout, heads=heads, head_dim=head_dim, head_gates=kv_heads, kv_inner=kv_heads * head_dim, width=width,
                     mlp_width=mlp_width, mlp_matrices=matrices,
                     attention=attn, head_outputs=tuple(block.get_submodule(path) for path in head_outputs),
                     mlp_module=block.get_submodule(layout.mlp), mlp_output=down, paths=paths,
                     router_width=layout.router_width(block), image_arg=io.image_arg, text_arg=io.text_arg)


def _optional(block: nn.Module, path: str) -> nn.Module | None:
    try:
        return block.get_submodule(path)
    except AttributeError:
        return None


def block_costs(site: BlockSite, image_tokens: int, text_tokens: int) -> tuple[float, float]:
    """(attention, MLP) multiply-adds of one call for one sample, the parts the gates scale.

    Attention: the q, k, v and output projections plus the two attention matmuls, over the joint
    sequence where the attention is joint and over the image tokens where it is self-attention
    (the cross-attention is not gated). MLP: the image rows of the MLP (plus, in single blocks,
    the MLP share of `proj_out`). The text rows' MLP and the norms are not gated and not counted,
    as in DyDiT.
    """
    tokens = image_tokens + text_tokens if site.layout.joint_attention else image_tokens
    inner = site.heads * site.head_dim
    mixing = tokens * site.head_dim if site.layout.linear_attention else tokens * tokens  # per channel: Kᵀ·V and Q·(KᵀV), or QKᵀ and AV
    attention = 2 * tokens * site.width * (inner + site.kv_inner) + 2 * mixing * inner  # q and out; k and v
    mlp = site.mlp_matrices * image_tokens * site.width * site.mlp_width
    return float(attention), float(mlp)
