"""What RALU sampling costs a full-size model: transformer FLOPs per call at each stage's sequence
length, counted on fake tensors (nothing is allocated), against full-resolution sampling.

    >>> from blockskip.sampling import RALUSettings
    >>> cost = estimate_ralu_sampling("FLUX.1-dev", RALUSettings.preset("4x"), 1024, 1024)
    >>> cost.tokens, cost.calls
    ((1024, 1945, 4096), (5, 6, 7))
    >>> round(cost.ratio_to(cost.total_calls), 1), round(cost.ratio_to(50), 1)
    (1.6, 4.4)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..families.presets import get_preset
from ..families.step_inputs import StepShape, training_inputs
from ..sampling import MixedLayout, RALUSettings
from ..sampling.mixed_tokens import select_cells
from ..sampling.sd3_mixed import mixed_positions, sd3_mixed_forward
from .accounting import FlopCounter
from .fake import fake_model

SUPPORTED = ("FluxTransformer2DModel", "SD3Transformer2DModel")


@dataclass(frozen=True)
class SamplingCost:
    """Per stage: model calls, image tokens per call and FLOPs per call (one guidance branch)."""

    model: str
    height: int
    width: int
    calls: tuple[int, ...]
    tokens: tuple[int, ...]
    flops_per_call: tuple[int, ...]
    full_resolution_flops_per_call: int

    @property
    def total_calls(self) -> int:
        return sum(self.calls)

    @property
    def flops(self) -> int:
        return sum(n * f for n, f in zip(self.calls, self.flops_per_call))

    def ratio_to(self, steps: int) -> float:
        """Speed-up in FLOPs over full-resolution sampling with `steps` model calls."""
        return steps * self.full_resolution_flops_per_call / self.flops


def _stage_layouts(settings: RALUSettings, height: int, width: int) -> list[MixedLayout | None]:
    """The layout of each stage (None: the plain full grid); region cells stand for any choice, the count is what matters."""
    if settings.stages == 1:
        return [None]
    low = MixedLayout.low(height // 2, width // 2)
    layouts = [low]
    if settings.stages == 3:
        layouts.append(low.with_high(select_cells(torch.arange(low.height * low.width).reshape(1, low.height, low.width).float(),
                                                  settings.region_fraction)))
    return [*layouts, None]


def _forward_flops(model, shape: StepShape, layout: MixedLayout | None, mixed: bool, tokens: int, positions, class_name: str) -> int:
    kwargs, _ = training_inputs(model, shape)
    counter = FlopCounter()
    with torch.no_grad(), counter:
        if layout is None or class_name == "FluxTransformer2DModel":
            if layout is not None:  # FLUX takes any sequence: tokens and ids of the layout
                kwargs["hidden_states"] = kwargs["hidden_states"].new_empty(shape.batch_size, len(positions), kwargs["hidden_states"].shape[-1])
                kwargs["img_ids"] = positions
            model(**kwargs)
        elif not mixed:
            model(**kwargs)
        else:
            latents = kwargs.pop("hidden_states")
            sequence = latents.new_empty(shape.batch_size, tokens, latents.shape[1] * model.config.patch_size**2)
            sd3_mixed_forward(model, sequence, layout, kwargs["timestep"], kwargs["encoder_hidden_states"], kwargs["pooled_projections"],
                              positions=positions)
    return counter.total


def estimate_ralu_sampling(model: str, settings: RALUSettings, height: int, width: int, text_length: int | None = None) -> SamplingCost:
    """FLOPs of sampling one `height`×`width` image of preset `model` (FLUX or SD3) with `settings`."""
    preset = get_preset(model)
    class_name = preset.class_name
    if class_name not in SUPPORTED:
        raise ValueError(f"RALU sampling is priced for {', '.join(SUPPORTED)}, not {class_name} ({preset.name})")
    unit = 32 if settings.stages > 1 else 16
    if height % unit or width % unit:
        raise ValueError(f"RALU with {settings.stages} stages needs sides divisible by {unit} px, got {height}×{width}")
    text = text_length or preset.text_length
    full_shape = StepShape(height=height, width=width, text_length=text)
    layouts = _stage_layouts(settings, height // 16, width // 16)
    tokens = [layout.tokens if layout is not None else (height // 16) * (width // 16) for layout in layouts]
    # everything data-dependent (which cells, their ids) is worked out on real tensors, before the fake mode
    ids = [layout.position_ids() if layout is not None else None for layout in layouts]
    mixed = [layout is not None and bool(layout.high.any()) for layout in layouts]
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = fake_model(preset.config, torch.bfloat16, mode)
        per_call = []
        for layout, layout_ids, is_mixed, count in zip(layouts, ids, mixed, tokens):
            shape = full_shape
            positions = layout_ids
            if class_name == "SD3Transformer2DModel" and layout is not None:
                if is_mixed:
                    positions = _real(lambda: mixed_positions(fake.pos_embed, layout, "cpu", torch.bfloat16), mode)
                else:  # an all-low stage is a half-size image
                    shape = StepShape(height=height // 2, width=width // 2, text_length=text)
            per_call.append(_forward_flops(fake, shape, layout, is_mixed, count, positions, class_name))
        full = _forward_flops(fake, full_shape, None, False, tokens[-1], None, class_name)
    return SamplingCost(preset.name, height, width, tuple(settings.steps), tuple(tokens), tuple(per_call), full)


def _real(compute, mode: FakeTensorMode):
    """`compute()` outside the fake mode (its result feeds the fake forward as a real input)."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        return compute()


@dataclass(frozen=True)
class DynamicCost:
    """One forward of a full-size model with DyDiT gating at `target` in every block (estimated)."""

    model: str
    height: int
    width: int
    target: float
    flops: int  # the ungated forward, counted on fake tensors
    gated_flops: float  # the part the gates scale: attention and image-stream MLP of every block

    @property
    def dynamic_flops(self) -> float:
        return self.flops - (1 - self.target) * self.gated_flops

    @property
    def ratio(self) -> float:
        """Speed-up in FLOPs of the gated forward over the ungated one."""
        return self.flops / self.dynamic_flops


def estimate_dynamic_forward(model: str, target: float, height: int, width: int, text_length: int | None = None,
                             frames: int | None = None) -> DynamicCost:
    """FLOPs of one forward of preset `model` when hard-mode gates keep `target` of the gated share.

    The gated share is `blockskip.dynamic`'s own cost model (q/k/v/out projections, the attention
    matmuls, the image-stream MLP; 2 FLOPs per multiply-add), summed over the blocks of one fake
    forward at this shape, so the ratio is what the FLOPs penalty's λ buys at inference, before
    gather overheads. `frames` is for video models.

        >>> cost = estimate_dynamic_forward("FLUX.1-dev", 0.5, 1024, 1024)
        >>> round(cost.gated_flops / cost.flops, 2), round(cost.ratio, 2)
        (0.94, 1.89)
    """
    from ..dynamic.blocks import SUPPORTED_BLOCKS, block_costs, block_site
    from ..families.layouts import get_layout

    preset = get_preset(model)
    if not 0 < target <= 1:
        raise ValueError(f"target must lie in (0, 1], got {target}")
    shape = StepShape(height=height, width=width, text_length=text_length or preset.text_length, frames=frames)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = fake_model(preset.config, torch.bfloat16, mode)
        blocks = [block for block_list in get_layout(fake) for block in block_list.blocks]
        unsupported = sorted({type(block).__name__ for block in blocks} - set(SUPPORTED_BLOCKS))
        if unsupported:
            raise ValueError(f"dynamic gating is not priced for {preset.class_name} ({preset.name}): its {', '.join(unsupported)} "
                             f"blocks are not among the supported {', '.join(SUPPORTED_BLOCKS)}")
        kwargs, _ = training_inputs(fake, shape, torch.bfloat16)
        model_text = kwargs["encoder_hidden_states"].shape[1] if "encoder_hidden_states" in kwargs else 0
        gated, hooks = [], []
        for block in blocks:
            site, signature = block_site(block), inspect.signature(block.forward)

            def price(module, args, block_kwargs, site=site, signature=signature):
                tokens = site.call_tokens(signature.bind_partial(*args, **block_kwargs).arguments, model_text)
                gated.append(2 * sum(block_costs(site, *tokens)))

            hooks.append(block.register_forward_pre_hook(price, with_kwargs=True))
        counter = FlopCounter()
        try:
            with torch.no_grad(), counter:
                fake(**kwargs)
        finally:
            for hook in hooks:
                hook.remove()
    return DynamicCost(preset.name, height, width, target, counter.total, sum(gated))
