"""LoRA only on kept blocks: turn SimpleTuner's LoRA targets into the kept blocks' own layer names.

`ModelFoundation.add_lora_adapter()` builds `LoraConfig(target_modules=self.get_lora_target_layers(),
...)` and calls `self.model.add_adapter(...)`. FLUX's `get_lora_target_layers()` returns layer
suffixes chosen by `--flux_lora_target` (`to_k`, `to_q`, ... ; `all+ffs` adds `proj_out`, which
also names the model's output layer) or `--peft_lora_target_modules`; `tiny` and `nano` return
fully qualified names in single blocks 7 and 20. The adapter wraps `get_lora_target_layers` on
the family object and returns explicit module names:

- every Linear layer in a kept block that a target names (PEFT's own rule: the name equals the
  target or ends in `.` + target), under the block's original index, so the saved keys are the
  full model's and the LoRA loads into the stock diffusers pipeline;
- a target inside a skipped block is an error (it would silently train nothing there);
- layers outside the block lists that a target names (`proj_out`, `x_embedder`) are left out,
  with a `[blockskip]` line: DiT-BlockSkip trains LoRA in the kept blocks only.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip import apply_block_skip
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=2, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
    ...     axes_dims_rope=(2, 2, 4))
    >>> handle = apply_block_skip(model, {"skip": {"leading": 1, "trailing": 2}})
    >>> kept, dropped = kept_block_targets(model, ["to_q", "proj_out"])
    >>> kept, dropped
    (['transformer_blocks.1.attn.to_q'], ['proj_out'])
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from ...skipping.lora import lora_target_modules
from ...skipping.skip import get_block_skip
from ..patching import Patches
from .errors import SimpleTunerAdapterError
from .session import TrainingSession


def kept_block_targets(model: nn.Module, targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """`(kept-block layer names the targets match, names of matched layers outside the blocks)`."""
    handle = get_block_skip(model)
    if handle is None:
        raise SimpleTunerAdapterError("LoRA targets were asked for before blockskip skipped the transformer")
    targets = [str(target) for target in targets]
    skipped = handle.skipped_block_names()
    for target in targets:
        block = next((name for name in skipped if re.match(rf"^{re.escape(name)}(\.|$)", target)), None)
        if block is not None:
            raise SimpleTunerAdapterError(
                f"the LoRA target {target!r} lies in the skipped block {block} (e.g. --flux_lora_target tiny/nano, or "
                "--peft_lora_target_modules): skipped blocks hold no layers to train. Choose targets by suffix "
                "(--flux_lora_target all) or in kept blocks only."
            )
    kept = lora_target_modules(model, targets)
    blocks = tuple(f"{block_list.name}." for block_list in handle.layout)
    outside = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not name.startswith(blocks)
        and any(name == target or name.endswith("." + target) for target in targets)
    ]
    return kept, outside


def install_target_hook(patches: Patches, family_model: Any, session: TrainingSession) -> None:
    """Wrap `family_model.get_lora_target_layers` (undone with `patches`)."""
    original = family_model.get_lora_target_layers

    @functools.wraps(original)
    def get_lora_target_layers(*args: Any, **kwargs: Any):
        targets = original(*args, **kwargs)
        model = getattr(family_model.model, "_orig_mod", family_model.model)
        if isinstance(targets, str):
            targets = [targets]
        kept, outside = kept_block_targets(model, targets)
        if not kept:
            raise SimpleTunerAdapterError(
                f"none of SimpleTuner's LoRA targets {list(targets)} names a layer in a kept block "
                f"({', '.join(session.handle.kept_block_names()) if session.handle else 'none'})"
            )
        if outside:
            session.log(f"LoRA targets outside the transformer blocks left out (kept blocks only): {', '.join(outside)}")
        session.lora_targets, session.dropped_targets = kept, outside
        session.log(f"LoRA on {len(kept)} layers in {len(session.handle.kept_block_names())} kept blocks")
        return kept

    patches.set(family_model, "get_lora_target_layers", get_lora_target_layers)
