"""kohya's BFL-layout FLUX (`library.flux_models.Flux`) in blockskip's registries.

sd-scripts trains its own copy of Black Forest Labs' FLUX.1 model, not diffusers'
`FluxTransformer2DModel`. Same 19 + 38 blocks in the same order, different names:

- `double_blocks[i]` is a `DoubleStreamBlock`: `forward(img, txt, vec, pe, txt_attention_mask)`
  returns `(img, txt)` (image first, unlike diffusers' FLUX blocks);
- the model concatenates `cat(txt, img)` once, and every `SingleStreamBlock` takes and returns
  that joint sequence as `forward(x, vec, pe, txt_attention_mask)` (called positionally:
  `block(img, vec=..., ...)`); stand-ins bind arguments by the original signature, so that works.

`register_kohya_flux()` registers both block classes, the model's block lists, and the paper's
skip-ratio table for the 57-block model (the same network as diffusers' FLUX.1, so the same
table). `kohya_plan()` lets a plan made for `FluxTransformer2DModel` (what `blockskip plan
--model flux.1-dev` writes) drive kohya's `Flux`.

Example:
    >>> from blockskip import BlockSkipPlan
    >>> register_kohya_flux()
    >>> from blockskip.families.layouts import block_io_for
    >>> block_io_for("SingleStreamBlock").returns, block_io_for("DoubleStreamBlock").returns
    (('joint',), ('image', 'text'))
    >>> plan = kohya_plan(BlockSkipPlan.from_dict({"model": {"class": "FluxTransformer2DModel"}, "skip": {"ratio": 0.3}}))
    >>> plan.model.class_name, plan.resolve_skip("Flux", 57)[:2]
    ('Flux', (7, 10))
"""

from __future__ import annotations

from ...families.layouts import register_block_io, register_model_layout
from ...skipping.plan import BlockSkipPlan
from ...skipping.skip_table import DEFAULT_TABLE, SkipTable, get_skip_table, register_skip_table
from .errors import KohyaAdapterError

MODEL_CLASS = "Flux"
DIFFUSERS_EQUIVALENT = "FluxTransformer2DModel"
BLOCK_LISTS = ("double_blocks", "single_blocks")
FLUX_BLOCKS = 57


def register_kohya_flux() -> None:
    """Teach blockskip kohya's FLUX layout (idempotent)."""
    register_block_io("DoubleStreamBlock", returns=("image", "text"), image_arg="img", text_arg="txt")
    register_block_io("SingleStreamBlock", returns=("joint",), image_arg="x", text_arg=None)
    register_model_layout(MODEL_CLASS, block_lists=BLOCK_LISTS)
    if get_skip_table(MODEL_CLASS, FLUX_BLOCKS) is DEFAULT_TABLE:
        table = get_skip_table(DIFFUSERS_EQUIVALENT, FLUX_BLOCKS)
        if table is not DEFAULT_TABLE:
            register_skip_table(SkipTable(MODEL_CLASS, FLUX_BLOCKS, dict(table.entries), table.source,
                                          table.provenance, table.kind))


def kohya_plan(plan: BlockSkipPlan) -> BlockSkipPlan:
    """`plan` as it applies to kohya's `Flux`: a FLUX.1 plan made for diffusers' class is accepted."""
    wanted = plan.model.class_name
    if wanted in (None, MODEL_CLASS):
        return plan
    if wanted != DIFFUSERS_EQUIVALENT:
        raise KohyaAdapterError(
            f"model.class: the plan was made for {wanted}, but kohya's flux_train_network.py trains FLUX.1 "
            f"({MODEL_CLASS}); make a plan with `blockskip plan --model flux.1-dev ...`"
        )
    data = plan.to_dict()
    data["model"]["class"] = MODEL_CLASS
    return BlockSkipPlan.from_dict(data)
