"""Where a model's transformer blocks are, and how each block class moves its streams.

Two registries, both keyed by class *name* so that look-ups never import a model (and so that a
trainer's own copy of a diffusers class matches too). A copy that keeps a name but changes the
streams (SimpleTuner's `FluxSingleTransformerBlock` takes and returns the joint sequence) is
registered for its class object with `register_block_io(cls, ..., exact=True)`, which wins:

- model class -> the attribute names of its block lists, in execution order;
- block class -> `BlockIO`: which forward arguments carry the image and text streams, and in
  which order the block returns them.

Our own table covers the twelve supported families. Block classes it lacks are looked up in
diffusers' block metadata (`diffusers.hooks._helpers.TransformerBlockRegistry`, a private API that
only ever serves as a fallback). To support another model, register its layout:

    >>> from blockskip.families.layouts import register_block_io, register_model_layout
    >>> io = register_block_io("MyBlock", returns=("text", "image"))
    >>> register_model_layout("MyTransformer", block_lists=("blocks",))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

ROLES = ("image", "text", "joint")


class UnknownLayoutError(LookupError):
    """The model or one of its block classes has no registered layout."""


@dataclass(frozen=True)
class BlockIO:
    """How a block class takes and returns its streams.

    `returns` names the returned values in order: "image", "text", or "joint" (one sequence of
    text and image tokens, carried in `image_arg`). A block that returns one value returns it
    bare, not in a tuple. The text stream of a block that does not return it (Sana, Wan) is
    conditioning only and never changes.
    """

    returns: tuple[str, ...]
    image_arg: str = "hidden_states"
    text_arg: str | None = "encoder_hidden_states"

    def __post_init__(self):
        unknown = [role for role in self.returns if role not in ROLES]
        if unknown or not self.returns:
            raise ValueError(f"BlockIO.returns must name roles from {ROLES}, got {self.returns}")
        if "text" in self.returns and self.text_arg is None:
            raise ValueError("a block that returns the text stream needs a text_arg")

    @property
    def returns_tuple(self) -> bool:
        return len(self.returns) > 1

    def argument_for(self, role: str) -> str:
        """The forward argument that carries `role` into the block."""
        return self.text_arg if role == "text" else self.image_arg


_TEXT_IMAGE = BlockIO(returns=("text", "image"))
_IMAGE_TEXT = BlockIO(returns=("image", "text"))
_IMAGE_ONLY = BlockIO(returns=("image",))
_JOINT_ONLY = BlockIO(returns=("joint",), text_arg=None)

_BLOCK_IO: dict[str, BlockIO] = {
    # FLUX.1 single blocks concatenate [text; image] inside the block and split it again.
    "FluxTransformerBlock": _TEXT_IMAGE,
    "FluxSingleTransformerBlock": _TEXT_IMAGE,
    # FLUX.2 single blocks get the [text; image] sequence from the model forward.
    "Flux2TransformerBlock": _TEXT_IMAGE,
    "Flux2SingleTransformerBlock": _JOINT_ONLY,
    # SD3's last block (context_pre_only) returns None for the text stream.
    "JointTransformerBlock": _TEXT_IMAGE,
    "SanaTransformerBlock": _IMAGE_ONLY,
    "QwenImageTransformerBlock": _TEXT_IMAGE,
    "WanTransformerBlock": _IMAGE_ONLY,
    "HunyuanVideoTransformerBlock": _IMAGE_TEXT,
    "HunyuanVideoSingleTransformerBlock": _IMAGE_TEXT,
    "HunyuanVideoTokenReplaceTransformerBlock": _IMAGE_TEXT,
    "HunyuanVideoTokenReplaceSingleTransformerBlock": _IMAGE_TEXT,
    "LTXVideoTransformerBlock": _IMAGE_ONLY,
    "CogVideoXBlock": _IMAGE_TEXT,
    "ChromaTransformerBlock": _TEXT_IMAGE,
    "ChromaSingleTransformerBlock": _JOINT_ONLY,
    # Lumina2's main layers run on the [image; text] sequence the refiners produced.
    "Lumina2TransformerBlock": _JOINT_ONLY,
    "AuraFlowJointTransformerBlock": _TEXT_IMAGE,
    "AuraFlowSingleTransformerBlock": _JOINT_ONLY,
}

_BLOCK_IO_BY_CLASS: dict[type, BlockIO] = {}  # register_block_io(..., exact=True); wins over names

_MODEL_BLOCK_LISTS: dict[str, tuple[str, ...]] = {
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "Flux2Transformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "SD3Transformer2DModel": ("transformer_blocks",),
    "SanaTransformer2DModel": ("transformer_blocks",),
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "WanTransformer3DModel": ("blocks",),
    "HunyuanVideoTransformer3DModel": ("transformer_blocks", "single_transformer_blocks"),
    "LTXVideoTransformer3DModel": ("transformer_blocks",),
    "CogVideoXTransformer3DModel": ("transformer_blocks",),
    "ChromaTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "Lumina2Transformer2DModel": ("layers",),
    "AuraFlowTransformer2DModel": ("joint_transformer_blocks", "single_transformer_blocks"),
}

SUPPORTED_MODELS = tuple(_MODEL_BLOCK_LISTS)


def _class_name(cls_or_name: type | str) -> str:
    return cls_or_name if isinstance(cls_or_name, str) else cls_or_name.__name__


def register_block_io(
    block_class: type | str,
    returns: tuple[str, ...],
    image_arg: str = "hidden_states",
    text_arg: str | None = "encoder_hidden_states",
    *,
    exact: bool = False,
) -> BlockIO:
    """Describe how a block class takes and returns its streams (see `BlockIO`).

    `exact=True` (a class, not a name) describes only that class object: for a trainer's own copy
    of a block class that shares a diffusers class's name but not its streams.
    """
    io = BlockIO(returns=tuple(returns), image_arg=image_arg, text_arg=text_arg)
    if exact:
        if not isinstance(block_class, type):
            raise TypeError(f"exact=True needs a class, not {block_class!r}")
        _BLOCK_IO_BY_CLASS[block_class] = io
    else:
        _BLOCK_IO[_class_name(block_class)] = io
    return io


def register_model_layout(model_class: type | str, block_lists: tuple[str, ...]) -> None:
    """Name the block lists of a model class, in the order its forward runs them."""
    if isinstance(block_lists, str) or not block_lists:
        raise ValueError("block_lists must be a non-empty tuple of attribute names")
    _MODEL_BLOCK_LISTS[_class_name(model_class)] = tuple(block_lists)


def _block_io_from_diffusers(name: str) -> BlockIO | None:
    try:
        from diffusers.hooks._helpers import TransformerBlockRegistry
    except ImportError:
        return None
    registry = getattr(TransformerBlockRegistry, "_registry", None)
    if registry is None:
        return None
    TransformerBlockRegistry._register()
    for block_class, metadata in TransformerBlockRegistry._registry.items():
        if block_class.__name__ != name:
            continue
        image_index = metadata.return_hidden_states_index
        text_index = metadata.return_encoder_hidden_states_index
        text_arg = getattr(metadata, "encoder_hidden_states_argument_name", "encoder_hidden_states")
        image_arg = getattr(metadata, "hidden_states_argument_name", "hidden_states")
        if text_index is None:
            return BlockIO(returns=("image",), image_arg=image_arg, text_arg=text_arg)
        returns = ("image", "text") if image_index < text_index else ("text", "image")
        return BlockIO(returns=returns, image_arg=image_arg, text_arg=text_arg)
    return None


def block_io_for(block: nn.Module | type | str) -> BlockIO:
    """The `BlockIO` of a block (instance, class or class name)."""
    cls = block if isinstance(block, (type, str)) else type(block)
    if isinstance(cls, type) and cls in _BLOCK_IO_BY_CLASS:
        return _BLOCK_IO_BY_CLASS[cls]
    name = _class_name(cls)
    io = _BLOCK_IO.get(name) or _block_io_from_diffusers(name)
    if io is None:
        raise UnknownLayoutError(
            f"no stream layout is registered for block class {name}; describe it with "
            f"blockskip.families.layouts.register_block_io({name!r}, returns=(...))"
        )
    return io


@dataclass(frozen=True)
class BlockList:
    """One list of blocks, with the global index of its first block."""

    name: str
    blocks: nn.ModuleList
    offset: int

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class ModelLayout:
    """A model's block lists in execution order. Global block indices count across lists."""

    model_class: str
    lists: tuple[BlockList, ...]

    @property
    def num_blocks(self) -> int:
        return sum(len(block_list) for block_list in self.lists)

    def locate(self, global_index: int) -> tuple[BlockList, int]:
        """The list holding block `global_index` and the block's index inside it."""
        for block_list in self.lists:
            if global_index < block_list.offset + len(block_list):
                return block_list, global_index - block_list.offset
        raise IndexError(f"block {global_index} is out of range for {self.num_blocks} blocks")

    def qualified_name(self, global_index: int) -> str:
        block_list, index = self.locate(global_index)
        return f"{block_list.name}.{index}"

    def __iter__(self) -> Iterator[BlockList]:
        return iter(self.lists)


def candidate_block_lists(model: nn.Module) -> list[str]:
    """Describe every ModuleList child of `model`: the places a block list could be."""
    candidates = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList) and len(child) > 0:
            classes = sorted({type(block).__name__ for block in child})
            candidates.append(f"{name} ({len(child)} × {'/'.join(classes)})")
    return candidates


def get_layout(model: nn.Module) -> ModelLayout:
    """Find the block lists of `model` and check that every block class has a `BlockIO`.

    Example:
        >>> from diffusers import FluxTransformer2DModel
        >>> model = FluxTransformer2DModel(num_layers=2, num_single_layers=3, attention_head_dim=8,
        ...     num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8, in_channels=8,
        ...     axes_dims_rope=(2, 2, 4))
        >>> [(block_list.name, len(block_list)) for block_list in get_layout(model)]
        [('transformer_blocks', 2), ('single_transformer_blocks', 3)]
    """
    model_class = type(model).__name__
    names = _MODEL_BLOCK_LISTS.get(model_class)
    if names is None:
        candidates = candidate_block_lists(model) or ["none found"]
        raise UnknownLayoutError(
            f"blockskip has no block layout for {model_class}. Candidate block lists: "
            f"{'; '.join(candidates)}. Register one with "
            f"blockskip.families.layouts.register_model_layout({model_class!r}, block_lists=(...)) and, for block "
            "classes it does not know, register_block_io(...). See docs/models.md."
        )
    lists, offset = [], 0
    for name in names:
        blocks = getattr(model, name, None)
        if not isinstance(blocks, nn.ModuleList):
            raise UnknownLayoutError(f"{model_class} has no block list {name!r} (registered layout: {names})")
        lists.append(BlockList(name, blocks, offset))
        offset += len(blocks)
    return ModelLayout(model_class, tuple(lists))
