"""What cannot work with the diffusers scripts, refused before anything loads, with the reason.

`check_plan` runs before the script starts; `check_script_args` runs on the script's own parsed
arguments, the moment its `parse_args()` returns; `check_lora_layers` runs once the transformer is
skipped and the skipped block names are known.

Example:
    >>> import argparse
    >>> from blockskip import BlockSkipPlan
    >>> plan = BlockSkipPlan.from_dict({"patches": {"min_size": 256, "max_size": 512}})
    >>> check_script_args(argparse.Namespace(resolution=1024, cache_latents=False), plan, dynamic_patches=True)
    Traceback (most recent call last):
    ...
    blockskip.integrations.diffusers.errors.ScriptAdapterError: --resolution 1024 does not match the plan's patches.max_size 512: ...
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

from ...skipping.plan import BlockSkipPlan
from .errors import ScriptAdapterError


def check_plan(plan: BlockSkipPlan) -> None:
    """Refuse plan settings the scripts cannot honour."""
    if plan.residuals.mode == "cached":
        raise ScriptAdapterError(
            'residuals.mode "cached" cannot work with the diffusers scripts: a residual bank holds residuals for a '
            "fixed, seeded schedule of (sample, crop, timestep, noise), but the scripts draw their own noise with "
            'torch.randn_like inside the training loop, which blockskip cannot control. Use "online" (the default).'
        )
    kept = plan.kept_blocks
    if kept.storage_dtype is not None or kept.group_offload:
        raise ScriptAdapterError(
            "kept_blocks.storage_dtype and kept_blocks.group_offload are not applied by the diffusers adapter "
            "(they must come after add_adapter, inside the script); remove them from the plan. "
            "For checkpointing pass the script's own --gradient_checkpointing."
        )


def check_script_args(args: argparse.Namespace, plan: BlockSkipPlan, dynamic_patches: bool) -> None:
    """Refuse script flags that cannot work with the plan (called on the script's parsed arguments)."""
    if dynamic_patches and getattr(args, "cache_latents", False):
        raise ScriptAdapterError(
            "--cache_latents cannot work with dynamic patches: the script encodes every image once before training, "
            "so each step would reuse the latents of a crop made for another noise level. Drop --cache_latents, or "
            "pass --blockskip_patches off to train at --resolution without timestep-aware crops."
        )
    resolution = getattr(args, "resolution", None)
    if dynamic_patches and resolution is not None and resolution != plan.patches.max_size:
        raise ScriptAdapterError(
            f"--resolution {resolution} does not match the plan's patches.max_size {plan.patches.max_size}: "
            "with dynamic patches the script's dataset must hand blockskip squares of patches.max_size, which it "
            f"crops at s(t) and resizes to patches.min_size {plan.patches.min_size} (the training resolution). "
            f"Pass --resolution {plan.patches.max_size}."
        )
    if getattr(args, "enable_npu_flash_attention", False):
        raise ScriptAdapterError(
            "--enable_npu_flash_attention walks the transformer's blocks, which blockskip has replaced by stand-ins "
            "in the skipped slots; this combination is untested, so it is refused."
        )


def check_lora_layers(lora_layers: str | None, skipped_blocks: Iterable[str]) -> None:
    """Refuse `--lora_layers` entries that name modules inside skipped blocks (they would get no LoRA)."""
    if not lora_layers:
        return
    skipped = list(skipped_blocks)
    for layer in (item.strip() for item in lora_layers.split(",")):
        block = next((name for name in skipped if layer == name or layer.startswith(name + ".")), None)
        if block is not None:
            raise ScriptAdapterError(
                f"--lora_layers names {layer!r}, which lies in the skipped block {block}: skipped blocks hold no "
                "layers to adapt. Name layers by suffix (attn.to_q) or only in kept blocks."
            )
