"""Hard mode: the closed heads, MLP channels and tokens are not computed at all.

For one block call, the open heads and groups (the union over the batch, since a weight slice
serves the whole batch) become sliced copies of the layers that produce or consume them:

- the q/k/v rows and output-projection columns of the open heads, and `attn.heads` set to their
  count (where a q/k norm spans every head, as in Wan and LTX, q and k run in full and the
  norm's output is cut to the open heads);
- the first MLP layer's rows and the last one's columns for the open groups.

These slices are swapped into the block for the call and the originals put back after it. Open
tokens are gathered (per sample: B·N rows flattened), sent through the MLP and scattered back. A
LoRA layer is sliced from its effective weight W + scale·B·A, so a trained LoRA is honoured; one
whose `lora_A` carries forward hooks (timestep-LoRA gates, which differ per sample) keeps its
LoRA branch instead, with B sliced and A run through the layer's own hooked module.
`SliceCache` keeps the slices per layer and pattern of open channels, keyed by the source
weights' storage and versions, so an in-place update (an optimizer step, `load_state_dict`) or a
`.to()` makes new ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def effective_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a Linear, or of a PEFT LoRA Linear with its active adapters merged in."""
    base = getattr(layer, "base_layer", None)
    if base is None:
        return layer.weight, layer.bias
    weight = base.weight
    for name in getattr(layer, "active_adapters", []):
        if name in getattr(layer, "lora_A", {}):
            delta = layer.lora_B[name].weight @ layer.lora_A[name].weight
            weight = weight + layer.scaling[name] * delta.to(weight.dtype)
    return weight, base.bias


def has_hooked_lora(layer: nn.Module) -> bool:
    """Whether a PEFT LoRA layer's active `lora_A` carries forward hooks (timestep-LoRA gates)."""
    lora_a = getattr(layer, "lora_A", None)
    return lora_a is not None and any(lora_a[name]._forward_hooks for name in getattr(layer, "active_adapters", []) if name in lora_a)


class SlicedLoRA(nn.Module):
    """`layer` (a PEFT LoRA Linear) for output `rows` and/or from input `columns` only, its LoRA
    branch kept: A runs through the layer's own (hooked) `lora_A` on the input scattered back to
    full width, the closed columns zero, and B is sliced to `rows`."""

    def __init__(self, layer: nn.Module, rows: torch.Tensor | None, columns: torch.Tensor | None, bias: bool = True):
        super().__init__()
        self.base = _plain_slice(layer.base_layer.weight, layer.base_layer.bias if bias else None, rows, columns)
        self.layer, self.columns = layer, columns
        self.adapters = [name for name in layer.active_adapters if name in layer.lora_A]
        self.up = {name: layer.lora_B[name].weight.detach()[rows] if rows is not None else layer.lora_B[name].weight.detach()
                   for name in self.adapters}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.base(hidden)
        if self.columns is not None:
            full = hidden.new_zeros(*hidden.shape[:-1], self.layer.in_features)
            full[..., self.columns] = hidden
            hidden = full
        for name in self.adapters:
            down = self.layer.lora_A[name](self.layer.lora_dropout[name](hidden))
            out = out + self.layer.scaling[name] * F.linear(down, self.up[name].to(down.dtype))
        return out


def _plain_slice(weight: torch.Tensor, bias: torch.Tensor | None, rows, columns) -> nn.Linear:
    if rows is not None:
        weight = weight[rows]
        bias = bias[rows] if bias is not None else None
    if columns is not None:
        weight = weight[:, columns]
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.requires_grad_(False)


class SliceCache:
    """Slices made by `sliced_linear`, reused while the layer's weights are unchanged: the key holds
    the layer, the open rows and columns, and every source tensor's storage and in-place version
    counter (an optimizer step or `load_state_dict` bumps the version; `.to()` moves the storage
    without bumping it)."""

    def __init__(self, capacity: int = 4096):
        self.capacity, self.slices = capacity, {}

    def clear(self) -> None:
        self.slices.clear()

    def __call__(self, layer: nn.Module, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None,
                 bias: bool = True) -> nn.Module:
        versions = tuple((tensor.data_ptr(), tensor._version) for tensor in layer.parameters())
        key = (id(layer), _index_key(rows), _index_key(columns), bias, versions)
        if key not in self.slices:
            if len(self.slices) >= self.capacity:
                self.slices.clear()
            make = sliced_conv if isinstance(layer, nn.Conv2d) else sliced_linear
            self.slices[key] = make(layer, rows, columns, bias)
        return self.slices[key]


def _index_key(index: torch.Tensor | None):
    return None if index is None else tuple(index.tolist())


def sliced_linear(layer: nn.Module, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None,
                  bias: bool = True) -> nn.Module:
    """A module computing `layer` for output `rows` and/or from input `columns` only (without its
    bias when `bias` is False): a plain Linear, or a `SlicedLoRA` when the LoRA branch carries hooks."""
    if has_hooked_lora(layer):
        return SlicedLoRA(layer, rows, columns, bias)
    weight, layer_bias = effective_weight(layer)
    return _plain_slice(weight, layer_bias if bias else None, rows, columns)


class SelectChannels(nn.Module):
    """`norm` over every head's channels, then only the open ones: for q/k norms that span all heads
    (Wan, LTX), whose projections must therefore run in full."""

    def __init__(self, norm: nn.Module, channels: torch.Tensor):
        super().__init__()
        self.norm, self.channels = norm, channels

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden)[..., self.channels.to(hidden.device)]


_PROJECTIONS = (("to_q", "norm_q"), ("to_k", "norm_k"), ("to_v", None),
                ("add_q_proj", "norm_added_q"), ("add_k_proj", "norm_added_k"), ("add_v_proj", None))


def head_slices(attn: nn.Module, slices: "SliceCache", channels: torch.Tensor, kv_channels: torch.Tensor, head_dim: int):
    """(module, attribute, replacement) for an attention module to compute the heads in `channels`
    (queries) and `kv_channels` (keys and values: the same heads, or their groups' key/value heads
    in grouped-query attention) only.

    Each projection is sliced to the open heads' rows; one followed by a norm over more than one
    head's channels runs in full and the norm is followed by a `SelectChannels` instead. The head count
    (and `inner_dim`, which some processors divide by it) becomes the open heads'.
    """
    swaps = []
    for projection, norm_name in _PROJECTIONS:
        layer = getattr(attn, projection, None)
        if layer is None:
            continue
        channels_here = channels if projection in ("to_q", "add_q_proj") else kv_channels
        norm = getattr(attn, norm_name, None) if norm_name else None
        if norm is not None and _normalized_width(norm) not in (None, head_dim):  # spans the heads (Wan, LTX)
            swaps.append((attn, norm_name, SelectChannels(norm, channels_here)))
        else:
            swaps.append((attn, projection, slices(layer, rows=channels_here)))
    count = len(channels) // head_dim
    swaps.append((attn, "heads", count))
    if hasattr(attn, "inner_dim"):
        swaps.append((attn, "inner_dim", count * head_dim))
    return swaps


def _normalized_width(norm: nn.Module) -> int | None:
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "dim", None)
    if shape is not None:
        return int(shape[-1]) if isinstance(shape, (tuple, list, torch.Size)) else int(shape)
    weight = getattr(norm, "weight", None)
    return None if weight is None else int(weight.shape[-1])


def sliced_conv(conv: nn.Conv2d, rows: torch.Tensor | None = None, columns: torch.Tensor | None = None,
                bias: bool = True) -> nn.Conv2d:
    """A Conv2d computing `conv` for output channels `rows` and/or from input channels `columns`
    only. A depthwise conv (Sana's `conv_depth`) keeps one filter per kept channel."""
    if getattr(conv, "base_layer", None) is not None:
        raise RuntimeError("hard mode slices plain convolutions only; put the LoRA on attention or linear layers")
    depthwise = conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1
    if conv.groups != 1 and not depthwise:
        raise RuntimeError(f"hard mode slices dense or depthwise convolutions, not one with {conv.groups} groups")
    weight, conv_bias = conv.weight, conv.bias if bias else None
    if rows is not None:
        weight = weight[rows]
        conv_bias = conv_bias[rows] if conv_bias is not None else None
    if columns is not None and not depthwise:
        weight = weight[:, columns]
    out_channels = weight.shape[0]
    in_channels = out_channels if depthwise else weight.shape[1]
    out = nn.Conv2d(in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=out_channels if depthwise else 1, bias=conv_bias is not None, padding_mode=conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if conv_bias is not None:
            out.bias.copy_(conv_bias)
    return out.requires_grad_(False)


def channel_index(open_parts: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the channels of the open parts (each part a contiguous `width // parts` slice)."""
    parts = open_parts.numel()
    size = width // parts
    opened = open_parts.nonzero()[:, 0]
    return (opened[:, None] * size + torch.arange(size, device=opened.device)[None]).flatten()


def run_on_rows(module: nn.Module, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`module` applied to the rows of `hidden` (B, N, D) where `rows` (B, N) is set, zeros elsewhere."""
    flat = hidden.reshape(-1, hidden.shape[-1])
    index = rows.reshape(-1).nonzero()[:, 0]
    result = module(flat[index])
    out = flat.new_zeros(flat.shape[0], result.shape[-1])
    out[index] = result
    return out.reshape(*hidden.shape[:-1], -1)


class GatheredMLP(nn.Module):
    """Runs `mlp` on the open rows only: (B, N, D) -> (B, N, D_out), zeros for the closed ones."""

    def __init__(self, mlp: nn.Module, open_rows):
        super().__init__()
        self.mlp, self.open_rows = mlp, open_rows  # open_rows(x) -> (B, N) bool, recorded by the caller

    def forward(self, hidden: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return run_on_rows(self.mlp, hidden, self.open_rows(hidden))


class FusedOutput(nn.Module):
    """FLUX single blocks' `proj_out` over [attention ‖ MLP] with the MLP part only for open tokens
    (and, with `whole_update`, the attention part too: closed tokens get zeros)."""

    def __init__(self, attention_part: nn.Module, mlp_part: nn.Module, inner: int, open_rows, whole_update: bool = False):
        super().__init__()  # mlp_part has no bias: attention_part adds proj_out's once
        self.attention_part, self.mlp_part, self.inner, self.open_rows = attention_part, mlp_part, inner, open_rows
        self.whole_update = whole_update

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = self.open_rows()  # (B, N) bool or None: every token
        if rows is not None and self.whole_update:
            return run_on_rows(lambda kept: self.attention_part(kept[..., : self.inner]) + self.mlp_part(kept[..., self.inner :]),
                               hidden, rows)
        out = self.attention_part(hidden[..., : self.inner])
        mlp = hidden[..., self.inner :]
        if rows is None:
            return out + self.mlp_part(mlp)
        flat_out, flat_mlp = out.reshape(-1, out.shape[-1]), mlp.reshape(-1, mlp.shape[-1])
        index = rows.reshape(-1).nonzero()[:, 0]
        flat_out = flat_out.index_add(0, index, self.mlp_part(flat_mlp[index]))
        return flat_out.reshape(out.shape)


class ParallelProjection(nn.Module):
    """FLUX.2 single blocks' `to_qkv_mlp_proj` as two parts side by side: [q ‖ k ‖ v] of the open
    heads for every row, then [value ‖ gate] of the open groups (an `OpenRowsMLP`)."""

    def __init__(self, qkv: nn.Module, mlp: "OpenRowsMLP"):
        super().__init__()
        self.qkv, self.mlp = qkv, mlp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.qkv(hidden), self.mlp(hidden)], dim=-1)


class OpenRowsMLP(nn.Module):
    """A single block's MLP input layer for the open groups (a sliced layer) and the open rows
    only, zeros elsewhere (FLUX `proj_mlp`, the MLP part of FLUX.2's `to_qkv_mlp_proj`)."""

    def __init__(self, layer: nn.Linear, rows_for):
        super().__init__()
        self.layer, self.rows_for = layer, rows_for  # rows_for(hidden) -> (B, N) bool, or None: every row

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = self.rows_for(hidden)
        return self.layer(hidden) if rows is None else run_on_rows(self.layer, hidden, rows)
