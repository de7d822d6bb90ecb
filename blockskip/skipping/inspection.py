"""Show a model's block layout and what a plan would do to it, without loading any weights.

Models are built on the `meta` device from a config, so even FLUX.1-dev's 12B parameters cost
nothing to inspect.

Example:
    >>> from blockskip.skipping.plan import BlockSkipPlan
    >>> model = model_from_config({"_class_name": "FluxTransformer2DModel", "num_layers": 2,
    ...     "num_single_layers": 3, "attention_head_dim": 8, "num_attention_heads": 2,
    ...     "joint_attention_dim": 16, "pooled_projection_dim": 8, "in_channels": 8, "axes_dims_rope": [2, 2, 4]})
    >>> print(describe(model, BlockSkipPlan.from_dict({"skip": {"leading": 3}})))  # doctest: +NORMALIZE_WHITESPACE
    FluxTransformer2DModel: 5 blocks
      transformer_blocks         2 × FluxTransformerBlock  takes (hidden_states, encoder_hidden_states) returns (text, image)
      single_transformer_blocks  3 × FluxSingleTransformerBlock  takes (hidden_states, encoder_hidden_states) returns (text, image)
    plan: skip 3 leading + 0 trailing (explicit block counts)
      transformer_blocks         0-1 skipped (leading)
      single_transformer_blocks  0 skipped (leading) | 1-2 kept, LoRA here
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..families.layouts import block_io_for, get_layout
from .plan import BlockSkipPlan
from .skip import describe_plan


def model_from_config(config: dict[str, Any] | str | Path) -> nn.Module:
    """Build a diffusers model on the meta device from a config dict, `config.json`, or model folder."""
    import diffusers

    if not isinstance(config, dict):
        path = Path(config)
        for candidate in (path, path / "config.json", path / "transformer" / "config.json"):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"no config.json at {config} (looked in it, and in its transformer/ folder)")
        config = json.loads(path.read_text())
    class_name = config.get("_class_name")
    model_class = getattr(diffusers, class_name, None) if class_name else None
    if model_class is None:
        raise ValueError(f"the config names no diffusers model class (_class_name: {class_name!r})")
    with torch.device("meta"):
        return model_class.from_config(config)


def _ranges(indices: list[int]) -> str:
    parts, start = [], None
    for position, index in enumerate(indices):
        if start is None:
            start = index
        if position + 1 == len(indices) or indices[position + 1] != index + 1:
            parts.append(str(start) if start == index else f"{start}-{index}")
            start = None
    return ",".join(parts)


def describe(model: nn.Module, plan: BlockSkipPlan | None = None) -> str:
    """A printable description of the model's block lists and, with a plan, what it skips."""
    layout = get_layout(model)
    width = max(len(block_list.name) for block_list in layout) + 2
    lines = [f"{layout.model_class}: {layout.num_blocks} blocks"]
    for block_list in layout:
        classes = sorted({type(block).__name__ for block in block_list.blocks})
        io = block_io_for(block_list.blocks[0])
        takes = [io.image_arg] + ([io.text_arg] if io.text_arg else [])
        lines.append(
            f"  {block_list.name:<{width}}{len(block_list)} × {'/'.join(classes)}  "
            f"takes ({', '.join(takes)}) returns ({', '.join(io.returns)})"
        )
    if plan is None:
        return "\n".join(lines)
    effect = describe_plan(model, plan)
    lines.append(f"plan: skip {effect['leading']} leading + {effect['trailing']} trailing ({effect['source']})")
    for block_list in layout:
        skipped = {
            index: span["position"]
            for span in effect["spans"]
            if span["list_name"] == block_list.name
            for index in range(span["start"], span["stop"])
        }
        parts = []
        for position in ("leading", "trailing"):
            indices = sorted(index for index, where in skipped.items() if where == position)
            if indices:
                parts.append((indices[0], f"{_ranges(indices)} skipped ({position})"))
        kept = [index for index in range(len(block_list)) if index not in skipped]
        if kept:
            parts.append((kept[0], f"{_ranges(kept)} kept, LoRA here"))
        lines.append(f"  {block_list.name:<{width}}{' | '.join(text for _, text in sorted(parts))}")
    return "\n".join(lines)
