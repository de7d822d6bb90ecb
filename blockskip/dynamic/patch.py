"""DyDiT's dynamic computation as a reversible patch on the kept blocks of a diffusers transformer.

- **Timestep-wise dynamic width** (`width=True`): per block, two routers read the block's `temb`
  (or, with `DynamicSettings(router_input="timestep")`, features of the timestep alone) and open
  or close each attention head and each MLP channel group. Head 0 and group 0 are always open,
  as in DyDiT.
- **Spatial-wise dynamic tokens** (`tokens=True`): per block, a router reads each image token's
  MLP input and lets closed tokens bypass the MLP.

Gates are hard 0/1 with straight-through gradients (`gates.gate`): they are noisy while the model
is in training mode and deterministic in eval mode. The routers live in the handle, not in the
model, so the model's state dict and its LoRA keys stay the stock ones. Train them with
`handle.parameters()`, add `handle.flops_loss(step)` to the diffusion loss, and
`handle.remove()` restores the model bit for bit. With a BlockSkip model only the kept blocks
are patched. Training gates by multiplying (the routers need every path's gradient); for
inference, `handle.hard = True` computes only the open heads, channels and tokens (`.hard`), so
the counted saving is real.

    >>> from diffusers import FluxTransformer2DModel
    >>> model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
    ...     joint_attention_dim=16, pooled_projection_dim=8, in_channels=8, axes_dims_rope=(2, 2, 4))
    >>> handle = apply_dynamic_computation(model)
    >>> len(handle.sites), sum(p.numel() for p in handle.parameters()) > 0
    (2, True)
    >>> handle.remove()
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from ..families.layouts import get_layout
from ..skipping.skip import get_block_skip
from .blocks import BlockSite, block_costs, block_site
from .gates import gate
from .hard import FusedOutput, GatheredMLP, OpenRowsMLP, ParallelProjection, SliceCache, channel_index, has_hooked_lora, head_slices
from .model_call import ModelCall, call_recorder
from .settings import DynamicSettings

_ATTRIBUTE = "_blockskip_dynamic"


class _Routers(nn.Module):
    def __init__(self, site: BlockSite, temb_dim: int, settings: DynamicSettings, width: bool, tokens: bool):
        super().__init__()
        if width:
            self.heads = nn.Linear(temb_dim, site.head_gates - 1)
            self.groups = nn.Linear(temb_dim, site.groups - 1)
            for router in (self.heads, self.groups):
                nn.init.xavier_uniform_(router.weight)
                nn.init.constant_(router.bias, settings.width_bias)
        if tokens:
            hidden = max(1, site.width // settings.token_hidden_ratio)
            self.tokens = nn.Sequential(nn.Linear(site.width, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            nn.init.constant_(self.tokens[2].bias, settings.token_bias)


@dataclass
class _Call:
    """What the gates of one block did in the last forward (per sample)."""

    costs: tuple[float, float] = (0.0, 0.0)
    heads: torch.Tensor | None = None  # (B, H) 0/1
    groups: torch.Tensor | None = None  # (B, G)
    tokens: torch.Tensor | None = None  # (B, N_img, 1)
    text_tokens: int = 0
    rows: torch.Tensor | None = None  # hard mode, FLUX single blocks: which joint-sequence rows run the MLP
    head_channels: torch.Tensor | None = None  # hard mode: the open heads' channels, where the rotary embedding is cut to them


@dataclass
class DynamicHandle:
    model: nn.Module
    settings: DynamicSettings
    width: bool
    tokens: bool
    sites: dict[str, BlockSite] = field(default_factory=dict)
    routers: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    calls: dict[str, _Call] = field(default_factory=dict)
    force_open: bool = False  # every gate 1 exactly: the patched model is the original
    hard: bool = False  # closed heads, groups and tokens are not computed (eval only; see .hard)
    hooks: list = field(default_factory=list)
    swapped: list = field(default_factory=list)  # (module, attribute, original) while a block runs hard
    slices: SliceCache = field(default_factory=SliceCache)
    model_call: ModelCall = field(default_factory=ModelCall)  # text length and timestep features of the current call

    def parameters(self):
        return self.routers.parameters()

    def flops_ratio(self) -> torch.Tensor:
        """Per sample of the last forward: the gated blocks' attention + MLP FLOPs, as a share of ungated."""
        spent, total = 0.0, 0.0
        for call in self.calls.values():
            attention, mlp = call.costs
            head_share = call.heads.mean(dim=1) if call.heads is not None else 1.0
            group_share = call.groups.mean(dim=1) if call.groups is not None else 1.0
            token_share = call.tokens.mean(dim=(1, 2)) if call.tokens is not None else 1.0
            spent = spent + attention * head_share + mlp * group_share * token_share
            total += attention + mlp
        if not total:
            raise RuntimeError("no gated block has run yet: call the model first")
        return spent / total if torch.is_tensor(spent) else torch.tensor(spent / total)

    def flops_loss(self, step: int | None = None) -> torch.Tensor:
        """DyDiT's FLOPs penalty, weight · (batch mean of the FLOPs ratio − λ)², λ from the schedule at `step`."""
        target = self.settings.target if step is None else self.settings.target_at(step)
        return self.settings.loss_weight * (self.flops_ratio().mean() - target) ** 2

    def restore(self) -> None:
        """Put back the layers a hard-mode block call swapped for slices."""
        while self.swapped:
            module, attribute, original = self.swapped.pop()
            setattr(module, attribute, original)

    def remove(self) -> None:
        """Take every hook off; the model is the original again."""
        self.restore()
        self.slices.clear()
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self.model.__dict__.pop(_ATTRIBUTE, None)


def _gates(logits: torch.Tensor, handle: DynamicHandle, always_open: bool) -> torch.Tensor:
    if handle.force_open:
        values = torch.ones_like(logits)
    else:
        values = gate(logits.float(), handle.settings.tau, handle.settings.threshold, training=handle.model.training)
    if always_open:  # head 0 / group 0
        values = torch.cat([values.new_ones(*values.shape[:-1], 1), values], dim=-1)  # (also with no optional gates)
    return values


def _expand(mask: torch.Tensor, parts: int, width: int) -> torch.Tensor:
    """(B, parts) -> (B, 1, width): each part's gate repeated over its share of the channels."""
    return mask.repeat_interleave(width // parts, dim=-1)[:, None, :]


def _install_block(handle: DynamicHandle, name: str, site: BlockSite) -> None:
    routers = handle.routers[name.replace(".", "_")]
    signature = inspect.signature(site.block.forward)

    def begin(module, args, kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments  # gradient checkpointing passes them positionally
        timestep_routers = handle.settings.router_input == "timestep"
        condition = handle.model_call.features if timestep_routers else site.router_input(bound[site.layout.temb_arg])
        image_tokens, text_tokens = site.call_tokens(bound, handle.model_call.text_tokens)
        call = _Call(costs=block_costs(site, image_tokens, text_tokens), text_tokens=text_tokens)
        if handle.width:
            call.heads = _gates(routers.heads(condition), handle, always_open=True)
            call.groups = _gates(routers.groups(condition), handle, always_open=True)
        handle.calls[name] = call
        handle.restore()  # a call that raised may have left slices in
        if handle.hard:
            if module.training or torch.is_grad_enabled():
                raise RuntimeError("hard mode is for inference: call model.eval() and run under torch.no_grad()")
            _swap_in_slices(handle, site, call, routers)

    def end(module, args, output):
        handle.restore()

    def token_gates(normed_image: torch.Tensor) -> torch.Tensor:
        logits = routers.tokens(normed_image.float())
        return _gates(logits, handle, always_open=False)

    handle.hooks.append(site.block.register_forward_pre_hook(begin, with_kwargs=True))
    handle.hooks.append(site.block.register_forward_hook(end))
    if site.layout.rope_on_heads:
        handle.hooks.append(site.attention.register_forward_pre_hook(_rotary_cutter(handle, name), with_kwargs=True))
    inner = site.heads * site.head_dim
    if site.kind == "double":
        def gate_heads(module, args):
            call = handle.calls[name]
            return (args[0] * _expand(call.heads, site.head_gates, inner).to(args[0].dtype), *args[1:]) if call.heads is not None else None

        def gate_groups(module, args):
            call = handle.calls[name]
            if call.groups is None:
                return None
            mask = _expand(call.groups, site.groups, site.mlp_width)
            mask = mask[:, 0, :, None, None] if site.layout.conv_mlp else mask  # (B, C, H, W) maps: channels on dim 1
            return (args[0] * mask.to(args[0].dtype), *args[1:])

        def gate_tokens(module, args, output):
            if handle.hard:  # the gathered MLP has chosen the tokens already
                return None
            call = handle.calls[name]
            call.tokens = token_gates(site.image_rows(args[0], call.text_tokens))
            return output * site.with_text_rows(call.tokens, call.text_tokens, 1.0).to(output.dtype)

        if handle.width:
            handle.hooks += [layer.register_forward_pre_hook(gate_heads) for layer in site.head_outputs]
            handle.hooks.append(site.mlp_output.register_forward_pre_hook(gate_groups))
        if handle.tokens:
            handle.hooks.append(site.mlp_module.register_forward_hook(gate_tokens))
        return

    def route_tokens(module, args):  # proj_mlp's input: the normed joint sequence
        call = handle.calls[name]
        call.tokens = token_gates(site.image_rows(args[0], call.text_tokens))

    def gate_fused(module, args):  # proj_out's input: [attention output ‖ MLP activations]
        call = handle.calls[name]
        hidden = args[0]
        attention, mlp = hidden[..., :inner], hidden[..., inner:]
        if call.heads is not None:
            attention = attention * _expand(call.heads, site.head_gates, inner).to(hidden.dtype)
            mlp = mlp * _expand(call.groups, site.groups, site.mlp_width).to(hidden.dtype)
        if call.tokens is not None:
            mlp = mlp * site.with_text_rows(call.tokens, call.text_tokens, 1.0).to(hidden.dtype)
        return (torch.cat([attention, mlp], dim=-1), *args[1:])

    def drop_whole_update(module, args, output):  # DyFLUX: a closed image token keeps only its residual
        call = handle.calls[name]
        if handle.hard or call.tokens is None:  # hard mode's FusedOutput has left those rows at zero
            return None
        return output * site.with_text_rows(call.tokens, call.text_tokens, 1.0).to(output.dtype)

    if handle.tokens:
        handle.hooks.append(site.mlp_module.register_forward_pre_hook(route_tokens))
        if handle.settings.single_block_tokens == "block":
            handle.hooks.append(site.mlp_output.register_forward_hook(drop_whole_update))
    handle.hooks.append(site.mlp_output.register_forward_pre_hook(gate_fused))


def _rotary_cutter(handle: DynamicHandle, name: str):
    """A pre-hook cutting `image_rotary_emb` (cos, sin over the flattened heads) to the open heads'
    channels in hard mode. The embedding rotates channel pairs within a head, so rotating the cut
    q and k equals cutting the rotated ones."""

    def cut(module, args, kwargs):
        channels = handle.calls[name].head_channels
        if channels is None:
            return None
        if kwargs.get("image_rotary_emb") is None:
            if len(args) > 3:
                raise RuntimeError(f"hard mode cuts {name}'s rotary embedding by keyword; it was passed positionally")
            return None
        cos, sin = kwargs["image_rotary_emb"]
        channels = channels.to(cos.device)
        return args, {**kwargs, "image_rotary_emb": (cos[..., channels], sin[..., channels])}

    return cut


def _swap(handle: DynamicHandle, module: nn.Module, attribute: str, replacement) -> None:
    """Set `module.attribute` (a layer, or a count such as `heads`) for this call; `restore` puts it back."""
    handle.swapped.append((module, attribute, getattr(module, attribute)))
    setattr(module, attribute, replacement)


def _swap_path(handle: DynamicHandle, block: nn.Module, path: str, replacement: nn.Module) -> None:
    parent, _, attribute = path.rpartition(".")
    _swap(handle, block.get_submodule(parent) if parent else block, attribute, replacement)


def _swap_in_slices(handle: DynamicHandle, site: BlockSite, call: _Call, routers: _Routers) -> None:
    """Replace the block's layers by slices computing only what is open (batch union for heads/groups)."""
    block, paths = site.block, site.paths
    inner = site.heads * site.head_dim
    if handle.tokens:
        if any(has_hooked_lora(layer) for layer in (*site.mlp_module.modules(), site.mlp_output)):
            raise RuntimeError("hard mode sends only the open tokens of a batch through the MLP, but timestep-LoRA gates on "
                               "MLP layers need each token's sample: gate width only (apply_dynamic_width) or put the LoRA on attention")
    heads = call.heads.amax(dim=0) > 0 if call.heads is not None else torch.ones(site.head_gates, dtype=torch.bool)
    groups = call.groups.amax(dim=0) > 0 if call.groups is not None else torch.ones(site.groups, dtype=torch.bool)
    head_channels = channel_index(heads, inner)
    group_channels = channel_index(groups, site.mlp_width)
    if call.heads is not None:
        kv_channels = channel_index(heads, site.kv_inner)
        for module, attribute, replacement in head_slices(site.attention, handle.slices, head_channels, kv_channels, site.head_dim):
            _swap(handle, module, attribute, replacement)
        call.head_channels = head_channels if site.layout.rope_on_heads else None

    def open_rows(hidden):  # the MLP's rows that run: the open image tokens and any text rows
        if not handle.tokens:
            return None
        call.tokens = _gates(routers.tokens(site.image_rows(hidden, call.text_tokens).float()), handle, always_open=False)
        call.rows = site.with_text_rows(call.tokens[..., 0] > 0, call.text_tokens, True)
        return call.rows

    ups, down = [block.get_submodule(path) for path in paths["mlp_up"]], block.get_submodule(paths["mlp_down"])
    if site.kind == "double":
        if call.heads is not None:
            for path in paths["head_outputs"]:
                _swap_path(handle, block, path, handle.slices(block.get_submodule(path), columns=head_channels))
        if call.groups is not None:
            up_rows = _glu_rows(group_channels, site.mlp_width) if site.layout.fused_glu else group_channels
            for path, up in zip(paths["mlp_up"], ups):
                _swap_path(handle, block, path, handle.slices(up, rows=up_rows))
            _swap_path(handle, block, paths["mlp_down"], handle.slices(down, columns=group_channels))
        if handle.tokens:
            _swap_path(handle, block, paths["mlp"], GatheredMLP(site.mlp_module, open_rows))
        return
    call.rows = None
    attention_columns = head_channels if call.heads is not None else torch.arange(inner)
    if site.kind == "parallel":  # [q ‖ k ‖ v] rows of the open heads for every token, [value ‖ gate] rows of the open groups for open tokens
        qkv_rows = torch.cat([part * inner + attention_columns for part in range(3)])
        mlp_rows = 3 * inner + _glu_rows(group_channels, site.mlp_width)
        device = next(ups[0].parameters()).device
        projection = ParallelProjection(handle.slices(ups[0], rows=qkv_rows.to(device)),
                                        OpenRowsMLP(handle.slices(ups[0], rows=mlp_rows.to(device)), open_rows))
        _swap_path(handle, block, paths["mlp_up"][0], projection)
        _swap(handle, site.attention, "mlp_hidden_dim", len(group_channels))
    else:
        _swap_path(handle, block, paths["mlp_up"][0], OpenRowsMLP(handle.slices(ups[0], rows=group_channels), open_rows))
    device = next(down.parameters()).device  # a PEFT layer has no .weight of its own
    fused = FusedOutput(handle.slices(down, columns=attention_columns.to(device)),
                        handle.slices(down, columns=(inner + group_channels).to(device), bias=False),
                        len(attention_columns), lambda: call.rows, whole_update=handle.settings.single_block_tokens == "block")
    _swap_path(handle, block, paths["mlp_down"], fused)


def _glu_rows(group_channels: torch.Tensor, mlp_width: int) -> torch.Tensor:
    """The rows of a fused GLU input layer ([value ‖ gate], each `mlp_width` wide) for these hidden channels."""
    return torch.cat([group_channels, mlp_width + group_channels])


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    skip = get_block_skip(model)
    if skip is not None:
        return [(name, model.get_submodule(name)) for name in skip.kept_block_names()]
    return [(f"{block_list.name}.{index}", block) for block_list in get_layout(model) for index, block in enumerate(block_list.blocks)]


def apply_dynamic_computation(model: nn.Module, settings: DynamicSettings | None = None, *, width: bool = True,
                              tokens: bool = True) -> DynamicHandle:
    """Gate heads and MLP groups by timestep (`width`) and MLP tokens by content (`tokens`) in the
    kept blocks of `model` (every block when it is not block-skipped); see the module docs."""
    if not (width or tokens):
        raise ValueError("nothing to do: give width=True, tokens=True or both")
    if getattr(model, _ATTRIBUTE, None) is not None:
        raise RuntimeError("this model already has dynamic computation; handle.remove() first")
    settings = settings or DynamicSettings()
    handle = DynamicHandle(model, settings, width, tokens)
    parameter = next(model.parameters())
    for name, block in _blocks(model):
        site = block_site(block)
        if tokens and site.layout.no_tokens:
            raise TypeError(f"no dynamic tokens in {type(block).__name__}: {site.layout.no_tokens}; gate width only (apply_dynamic_width)")
        handle.sites[name] = site
        router_width = settings.timestep_width if settings.router_input == "timestep" else site.router_width
        handle.routers[name.replace(".", "_")] = _Routers(site, router_width, settings, width, tokens).to(parameter.device)
    for name, site in handle.sites.items():
        _install_block(handle, name, site)
    joint_input = any(site.text_arg is None for site in handle.sites.values())  # its text length comes from the model call
    timestep_width = settings.timestep_width if width and settings.router_input == "timestep" else None
    if joint_input or timestep_width:
        recorder = call_recorder(model, handle.model_call, text=joint_input, timestep_width=timestep_width)
        handle.hooks.append(model.register_forward_pre_hook(recorder, with_kwargs=True))
    model.__dict__[_ATTRIBUTE] = handle
    return handle


def apply_dynamic_width(model: nn.Module, settings: DynamicSettings | None = None) -> DynamicHandle:
    """Timestep-wise dynamic width only (heads and MLP channel groups)."""
    return apply_dynamic_computation(model, settings, width=True, tokens=False)


def apply_dynamic_tokens(model: nn.Module, settings: DynamicSettings | None = None) -> DynamicHandle:
    """Spatial-wise dynamic tokens only (image tokens bypass the MLP)."""
    return apply_dynamic_computation(model, settings, width=False, tokens=True)


def get_dynamic_computation(model: nn.Module) -> DynamicHandle | None:
    return getattr(model, _ATTRIBUTE, None)
