"""Skip spans: runs of consecutive skipped blocks inside one block list, and what a bank keeps of them.

Example:
    >>> from diffusers import FluxTransformer2DModel
    >>> from blockskip.families.layouts import get_layout
    >>> from blockskip.skipping.skip_table import SkipSplit
    >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=4, attention_head_dim=8,
    ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8, axes_dims_rope=(2, 2, 4))
    >>> [(s.list_name, s.start, s.stop, s.position) for s in skip_spans(get_layout(model), SkipSplit(3, 1, ""))]
    [('transformer_blocks', 0, 2, 'leading'), ('single_transformer_blocks', 0, 1, 'leading'), ('single_transformer_blocks', 3, 4, 'trailing')]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..families.layouts import BlockIO, ModelLayout, block_io_for, get_layout
from .plan import BlockSkipPlan
from .skip_table import SkipSplit


@dataclass(frozen=True)
class SkipSpan:
    """Consecutive skipped blocks inside one block list: `list_name[start:stop]`."""

    list_name: str
    start: int
    stop: int
    position: str  # "leading" or "trailing"

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def block_names(self) -> list[str]:
        return [f"{self.list_name}.{index}" for index in range(self.start, self.stop)]


def skip_spans(layout: ModelLayout, split: SkipSplit) -> list[SkipSpan]:
    """Cut the leading and trailing ranges at block-list boundaries."""
    total = layout.num_blocks
    ranges = [(0, split.leading, "leading"), (total - split.trailing, total, "trailing")]
    spans = []
    for begin, end, position in ranges:
        for block_list in layout:
            start = max(begin, block_list.offset) - block_list.offset
            stop = min(end, block_list.offset + len(block_list)) - block_list.offset
            if start < stop:
                spans.append(SkipSpan(block_list.name, start, stop, position))
    return spans


def stored_roles(span: SkipSpan, io: BlockIO) -> list[str]:
    """The streams a residual bank keeps for `span`.

    A leading span keeps every stream it returns; a trailing span only the image (or joint
    image+text) stream, because no kept block reads a trailing span's text and the output head
    reads only the image.
    """
    if span.position == "leading":
        return list(io.returns)
    return [role for role in io.returns if role != "text"]


def bank_spans(model: nn.Module, plan: BlockSkipPlan) -> list[dict[str, Any]]:
    """What a residual bank for `plan` on `model` holds, span by span (recorded in its manifest).

    Leading spans store their output (exactly `input + Δ`, since nothing upstream trains);
    trailing spans store `Δ = output − input`.
    """
    layout = get_layout(model)
    split = plan.resolve_skip(layout.model_class, layout.num_blocks)
    described = []
    for span in skip_spans(layout, split):
        io = block_io_for(getattr(model, span.list_name)[span.start])
        described.append(
            {
                "list": span.list_name,
                "start": span.start,
                "stop": span.stop,
                "position": span.position,
                "stores": "output" if span.position == "leading" else "delta",
                "roles": stored_roles(span, io),
            }
        )
    return described
