"""Timestep-dependent LoRA (DyDiT++'s TD-LoRA, in our own form): each LoRA rank is scaled per sample
by a gate that reads the block's timestep conditioning.

For a PEFT LoRA layer with factors A (r×in) and B (out×r), the update becomes
ΔW(t) = B · diag(1 + tanh(R·temb + c)) · A · scale. Here R and c are a small router per layer,
started at zero, so training starts from the ordinary LoRA. The gates multiply the output of
`lora_A`, inside PEFT's own forward. The ordinary LoRA (A, B) is the **static part**: save it as
usual (`save_lora`, `save_lora_weights`) and any stock loader reads it. The routers go to their own
safetensors file (`handle.save(path)`), which `load_timestep_lora` puts back on top. DyDiT++'s exact
TD-LoRA formula was not reachable (docs/research_dydit_notes.md §5), so this rank-gated form is our
choice, documented as such.

    >>> from diffusers import FluxTransformer2DModel
    >>> from peft import LoraConfig
    >>> model = FluxTransformer2DModel(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
    ...     joint_attention_dim=16, pooled_projection_dim=8, in_channels=8, axes_dims_rope=(2, 2, 4))
    >>> model.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_v"]))
    >>> handle = apply_timestep_lora(model)
    >>> len(handle.routers), sum(p.numel() for p in handle.parameters())
    (4, 272)
    >>> handle.remove()
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .blocks import block_site
from .patch import _blocks

FORMAT = "blockskip.td_lora"
_ATTRIBUTE = "_blockskip_td_lora"


@dataclass
class TimestepLoRAHandle:
    model: nn.Module
    adapter: str
    routers: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    hooks: list = field(default_factory=list)

    def parameters(self):
        return self.routers.parameters()

    def save(self, path: str | Path) -> Path:
        """The routers (not the static LoRA) as safetensors, written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.routers.state_dict().items()}
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(state, str(tmp), metadata={"format": FORMAT, "adapter": self.adapter, "layers": json.dumps(sorted(self.routers))})
        tmp.replace(path)
        return path

    def remove(self) -> None:
        """Take the gates off: the model is the ordinary (static) LoRA model again."""
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self.model.__dict__.pop(_ATTRIBUTE, None)


def _lora_layers(block: nn.Module, adapter: str):
    for name, module in block.named_modules():
        lora_a = getattr(module, "lora_A", None)
        if isinstance(lora_a, nn.ModuleDict) and adapter in lora_a:
            yield name, module


def apply_timestep_lora(model: nn.Module, adapter: str = "default") -> TimestepLoRAHandle:
    """Put a zero-started timestep gate on every rank of every `adapter` LoRA layer in the kept blocks."""
    if getattr(model, _ATTRIBUTE, None) is not None:
        raise RuntimeError("this model already has timestep LoRA gates; handle.remove() first")
    handle = TimestepLoRAHandle(model, adapter)
    device = next(model.parameters()).device
    for block_name, block in _blocks(model):
        layers = list(_lora_layers(block, adapter))
        if not layers:
            continue
        site, state = block_site(block), {}
        signature = inspect.signature(block.forward)

        def remember(module, args, kwargs, state=state, signature=signature, site=site):
            state["temb"] = site.router_input(signature.bind_partial(*args, **kwargs).arguments[site.layout.temb_arg])

        handle.hooks.append(block.register_forward_pre_hook(remember, with_kwargs=True))
        for layer_name, layer in layers:
            key = f"{block_name}.{layer_name}".replace(".", "_")
            router = nn.Linear(site.router_width, layer.r[adapter]).to(device)
            nn.init.zeros_(router.weight)
            nn.init.zeros_(router.bias)
            handle.routers[key] = router

            def gate(module, args, output, router=router, state=state):
                scale = 1 + torch.tanh(router(state["temb"].to(router.weight.dtype)))
                return output * scale[:, None, :].to(output.dtype)

            handle.hooks.append(layer.lora_A[adapter].register_forward_hook(gate))
    if not handle.routers:
        raise ValueError(f"no LoRA layers of adapter {adapter!r} in the model's (kept) blocks: add the LoRA first")
    model.__dict__[_ATTRIBUTE] = handle
    return handle


def load_timestep_lora(model: nn.Module, path: str | Path, adapter: str = "default") -> TimestepLoRAHandle:
    """Gates saved by `handle.save` on top of the model's (already loaded) static LoRA."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as opened:
        metadata = opened.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a timestep-LoRA gate file (format {metadata.get('format')!r})")
    handle = apply_timestep_lora(model, adapter)
    saved = load_file(str(path))
    expected = handle.routers.state_dict()
    if set(saved) != set(expected) or any(saved[k].shape != expected[k].shape for k in saved):
        handle.remove()
        raise ValueError(f"{path} was saved for other LoRA layers or ranks than this model has")
    handle.routers.load_state_dict(saved)
    return handle


def get_timestep_lora(model: nn.Module) -> TimestepLoRAHandle | None:
    return getattr(model, _ATTRIBUTE, None)
