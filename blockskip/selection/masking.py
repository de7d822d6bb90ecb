"""Cut image-query → text-key attention in chosen transformer blocks (the selection probe).

DiT-BlockSkip measures how much a region of depth matters to a personalized subject by removing
what the image tokens read from the prompt there and watching the generation change. Two kinds
of blocks do that reading:

- **joint attention** (FLUX, SD3, QwenImage, HunyuanVideo, Chroma, AuraFlow, CogVideoX):
  one attention over the concatenated text and image tokens. The probe adds a mask that hides
  the text keys from the image queries only; text queries still see everything, and image
  queries still see every image key, so no softmax row is ever empty. The concatenation order
  is per block class: `[text; image]` for FLUX, `[image; text]` for SD3 and HunyuanVideo.
- **cross-attention** (Sana, Wan, LTX, PixArt's `BasicTransformerBlock`): image queries read only
  text keys, so hiding every key would leave empty softmax rows (NaN). The probe zeroes the
  cross-attention output instead, which is what "no text" means for that block.

Processors differ in what they accept (SD3's joint processor ignores `attention_mask`, Qwen's
refuses one), so the joint mask is added at the `scaled_dot_product_attention` call itself,
through a `TorchFunctionMode` that is active only while a masked block's attention module runs.
This needs an attention backend that calls PyTorch's SDPA (diffusers' default, "native"); with
another one the probe fails loudly instead of measuring nothing.

Everything is per instance and reversible: hooks on the model, its blocks and their attention
modules, removed by `remove()`.

Example:
    >>> import torch
    >>> from diffusers import SanaTransformer2DModel
    >>> model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_layers=3, num_attention_heads=2,
    ...     attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
    ...     cross_attention_dim=16, caption_channels=8, sample_size=4, patch_size=1).eval()
    >>> x, t = torch.randn(1, 4, 4, 4), torch.tensor([500.0])
    >>> run = lambda text: model(x, encoder_hidden_states=text, timestep=t).sample
    >>> mask = mask_text_attention(model, blocks=range(3))
    >>> bool(torch.equal(run(torch.randn(1, 5, 8)), run(torch.randn(1, 5, 8))))   # text has no effect
    True
    >>> with mask.masking([]):                                                     # nothing masked
    ...     bool(torch.equal(run(torch.randn(1, 5, 8)), run(torch.randn(1, 5, 8))))
    False
    >>> mask.remove()
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..families.layouts import block_io_for, get_layout

TEXT_FIRST = "text_first"
IMAGE_FIRST = "image_first"
_SDPA_PARAMETERS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


class MaskingError(RuntimeError):
    """The probe cannot mask this model, or a masked attention call did not look as expected."""


@dataclass(frozen=True)
class TextAttention:
    """Where a block class lets image tokens read the text, and how to cut it.

    `kind` is "joint" (one attention over text and image tokens, concatenated in `order`) or
    "cross" (the image stream queries the text; the output is zeroed). `module` is the attribute
    path of that attention module inside the block.
    """

    kind: str
    module: str
    order: str | None = None

    def __post_init__(self):
        if self.kind not in ("joint", "cross"):
            raise ValueError(f"TextAttention.kind must be 'joint' or 'cross', got {self.kind!r}")
        if self.kind == "joint" and self.order not in (TEXT_FIRST, IMAGE_FIRST):
            raise ValueError(f"a joint TextAttention needs order {TEXT_FIRST!r} or {IMAGE_FIRST!r}, got {self.order!r}")


def _joint(module: str, order: str) -> TextAttention:
    return TextAttention("joint", module, order)


_CROSS = TextAttention("cross", "attn2")

_TEXT_ATTENTION: dict[str, TextAttention] = {
    "FluxTransformerBlock": _joint("attn", TEXT_FIRST),
    "FluxSingleTransformerBlock": _joint("attn", TEXT_FIRST),
    "Flux2TransformerBlock": _joint("attn", TEXT_FIRST),
    "Flux2SingleTransformerBlock": _joint("attn", TEXT_FIRST),
    "ChromaTransformerBlock": _joint("attn", TEXT_FIRST),
    "ChromaSingleTransformerBlock": _joint("attn", TEXT_FIRST),
    "QwenImageTransformerBlock": _joint("attn", TEXT_FIRST),
    "AuraFlowJointTransformerBlock": _joint("attn", TEXT_FIRST),
    "AuraFlowSingleTransformerBlock": _joint("attn", TEXT_FIRST),
    "CogVideoXBlock": _joint("attn1", TEXT_FIRST),
    # SD3 (its dual-attention `attn2` is image-only self-attention and stays untouched).
    "JointTransformerBlock": _joint("attn", IMAGE_FIRST),
    "HunyuanVideoTransformerBlock": _joint("attn", IMAGE_FIRST),
    "HunyuanVideoSingleTransformerBlock": _joint("attn", IMAGE_FIRST),
    "SanaTransformerBlock": _CROSS,
    # Wan image-to-video also reads the reference image in attn2; the probe removes both.
    "WanTransformerBlock": _CROSS,
    "LTXVideoTransformerBlock": _CROSS,
    "BasicTransformerBlock": _CROSS,  # PixArt-α/Σ and other Transformer2DModel-style DiTs
}


def register_text_attention(block_class: type | str, kind: str, module: str, order: str | None = None) -> TextAttention:
    """Tell the probe how a block class attends to the text (see `TextAttention`)."""
    spec = TextAttention(kind, module, order)
    _TEXT_ATTENTION[block_class if isinstance(block_class, str) else block_class.__name__] = spec
    return spec


def text_attention_for(block: nn.Module) -> TextAttention:
    """The `TextAttention` of a block instance; a clear error for unknown classes."""
    name = type(block).__name__
    if name == "SkippedBlock":
        raise MaskingError("the model has block skipping applied; call remove_block_skip before probing it")
    spec = _TEXT_ATTENTION.get(name)
    if spec is None:
        raise MaskingError(
            f"the selection probe does not know how block class {name} attends to the text; describe it with "
            f"blockskip.selection.masking.register_text_attention({name!r}, kind='joint'|'cross', module='attn', order=...)"
        )
    return spec


def _sequence_length(value: Any) -> int | None:
    return value.shape[1] if isinstance(value, torch.Tensor) and value.ndim >= 2 else None


class _ForwardState:
    """Text length seen so far in the current forward pass.

    Blocks that get the joint sequence with no separate text argument (FLUX.2, Chroma and
    AuraFlow single blocks) use the text length of the blocks before them.
    """

    def __init__(self):
        self.text_length: int | None = None


class _JointMaskMode(TorchFunctionMode):
    """Adds the image-query/text-key cut to every SDPA call over the joint sequence."""

    def __init__(self, text_length: int, image_length: int | None, order: str):
        super().__init__()
        self.text_length = text_length
        self.image_length = image_length
        self.order = order
        self.masked_calls = 0
        self.other_lengths: list[int] = []

    def _matches(self, length: int, key_length: int) -> bool:
        if key_length != length or length <= self.text_length:
            return False
        return self.image_length is None or length == self.text_length + self.image_length

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        call = dict(zip(_SDPA_PARAMETERS, args), **kwargs)
        length, key_length = call["query"].shape[-2], call["key"].shape[-2]
        if not self._matches(length, key_length):
            self.other_lengths.append(length)
            return func(*args, **kwargs)
        if call.get("is_causal"):
            raise MaskingError("cannot add the text mask to a causal attention call")
        call["attn_mask"] = self._cut(call.get("attn_mask"), length, call["query"].device)
        self.masked_calls += 1
        return func(**call)

    def _cut(self, mask: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
        keep = torch.ones(length, length, dtype=torch.bool, device=device)
        text = self.text_length
        if self.order == TEXT_FIRST:
            keep[text:, :text] = False
        else:
            keep[: length - text, length - text :] = False
        if mask is None:
            return keep
        if mask.dtype == torch.bool:
            return mask & keep
        if mask.is_floating_point():
            return torch.where(keep, mask, torch.tensor(float("-inf"), dtype=mask.dtype, device=mask.device))
        raise MaskingError(f"cannot combine the text mask with an attention mask of dtype {mask.dtype}")


class TextAttentionMask:
    """Hooks that cut image → text attention in the blocks named by `masked` (global indices).

    Hooks go on every block once; changing `masked` (or using `masking(...)`) switches blocks on
    and off without reinstalling anything, and an empty set leaves the outputs bit-identical.
    `blocks` defaults to the model's block lists in execution order (`blockskip.families.layouts`); pass
    a list of blocks to probe a model that has no registered layout.
    """

    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module] | None = None):
        if blocks is None:
            layout = get_layout(model)
            blocks = [block for block_list in layout for block in block_list.blocks]
        self.model = model
        self.blocks = list(blocks)
        self.specs = [text_attention_for(block) for block in self.blocks]
        self._masked: frozenset[int] = frozenset()
        self._state = _ForwardState()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._install()

    # ----------------------------------------------------------------- public

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def masked(self) -> frozenset[int]:
        return self._masked

    @masked.setter
    def masked(self, indices: Iterable[int]) -> None:
        indices = frozenset(int(index) for index in indices)
        outside = sorted(index for index in indices if not 0 <= index < self.num_blocks)
        if outside:
            raise IndexError(f"blocks {outside} are out of range for {self.num_blocks} blocks")
        self._masked = indices

    @contextmanager
    def masking(self, indices: Iterable[int]) -> Iterator["TextAttentionMask"]:
        """Mask `indices` inside the `with` block, then restore the previous set."""
        previous = self._masked
        self.masked = indices
        try:
            yield self
        finally:
            self._masked = previous

    def remove(self) -> None:
        """Remove every hook; the model is exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._masked = frozenset()

    def __enter__(self) -> "TextAttentionMask":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        name = type(self.model).__name__
        return f"TextAttentionMask({name}, {self.num_blocks} blocks, masked={sorted(self._masked)})"

    # ----------------------------------------------------------------- hooks

    def _install(self) -> None:
        try:
            model_signature = inspect.signature(self.model.forward)
        except (TypeError, ValueError):
            model_signature = None
        self._handles.append(
            self.model.register_forward_pre_hook(self._model_pre_hook(model_signature), with_kwargs=True)
        )
        for index, (block, spec) in enumerate(zip(self.blocks, self.specs)):
            try:
                attention = block.get_submodule(spec.module)
            except AttributeError as error:
                raise MaskingError(f"{type(block).__name__} has no attention module {spec.module!r}") from error
            if spec.kind == "cross":
                self._handles.append(attention.register_forward_hook(self._zero_hook(index)))
                continue
            record: dict[str, Any] = {}
            self._handles.append(block.register_forward_pre_hook(self._block_pre_hook(block, record), with_kwargs=True))
            self._handles.append(attention.register_forward_pre_hook(self._enter_hook(index, spec, record)))
            self._handles.append(attention.register_forward_hook(self._exit_hook(index, record), always_call=True))

    def _model_pre_hook(self, signature: inspect.Signature | None):
        def hook(module, args, kwargs):
            text = kwargs.get("encoder_hidden_states")
            if text is None and signature is not None:
                try:
                    text = signature.bind_partial(*args, **kwargs).arguments.get("encoder_hidden_states")
                except TypeError:
                    text = None
            self._state.text_length = _sequence_length(text)

        return hook

    def _block_pre_hook(self, block: nn.Module, record: dict):
        signature = inspect.signature(block.forward)
        io = block_io_for(block)

        def hook(module, args, kwargs):
            arguments = signature.bind_partial(*args, **kwargs).arguments
            text = arguments.get(io.text_arg) if io.text_arg else None
            if _sequence_length(text) is not None:
                self._state.text_length = _sequence_length(text)
                record["image_length"] = _sequence_length(arguments.get(io.image_arg))
            else:
                record["image_length"] = None  # joint input: image length = total - text
            record["text_length"] = self._state.text_length

        return hook

    def _enter_hook(self, index: int, spec: TextAttention, record: dict):
        def hook(module, args):
            if index not in self._masked:
                return
            if record.get("text_length") is None:
                raise MaskingError(
                    f"block {index} ({type(self.blocks[index]).__name__}): no text length known for this forward pass"
                )
            mode = _JointMaskMode(record["text_length"], record["image_length"], spec.order)
            mode.__enter__()
            record["mode"] = mode

        return hook

    def _exit_hook(self, index: int, record: dict):
        def hook(module, args, output):
            mode = record.pop("mode", None)
            if mode is None:
                return
            mode.__exit__(None, None, None)
            if mode.masked_calls == 0:
                expected = mode.text_length + (mode.image_length or 0)
                raise MaskingError(
                    f"block {index} ({type(self.blocks[index]).__name__}): its attention made no "
                    f"scaled_dot_product_attention call over the joint sequence (expected length {expected}, "
                    f"saw {mode.other_lengths or 'no SDPA call'}). The probe needs an attention backend that "
                    "calls torch's SDPA, such as diffusers' default 'native' backend."
                )

        return hook

    def _zero_hook(self, index: int):
        def hook(module, args, output):
            if index not in self._masked:
                return None
            if isinstance(output, torch.Tensor):
                return torch.zeros_like(output)
            if isinstance(output, tuple):
                return tuple(torch.zeros_like(value) if isinstance(value, torch.Tensor) else value for value in output)
            raise MaskingError(f"block {index}: cannot zero a cross-attention output of type {type(output).__name__}")

        return hook


def mask_text_attention(
    model: nn.Module, blocks: Iterable[int] = (), *, block_modules: Sequence[nn.Module] | None = None
) -> TextAttentionMask:
    """Install the probe on `model` and mask the blocks with global indices `blocks`.

    Returns the `TextAttentionMask`; change `.masked` to move the mask, and call `remove()` (or
    use it as a context manager) to take every hook off again.
    """
    mask = TextAttentionMask(model, block_modules)
    mask.masked = blocks
    return mask
