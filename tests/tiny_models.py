"""Tiny, real diffusers transformers for exactness tests.

``build_tiny(name)`` instantiates the actual diffusers model class ``name`` from a
hand-written miniature config (hidden width 32, 2 heads of 16 channels, a few
blocks) and pairs it with a generator of forward kwargs that mirror what the
corresponding diffusers pipeline passes (timestep scale, position ids, pooled
projections, guidance, masks, video shapes, ...).

Conventions shared by every family:

* weights come from ``torch.manual_seed(0)`` (the caller's global RNG state is
  preserved), fp32, CPU, ``eval()`` mode;
* every block list holds at least 3 blocks (two-list families: 3 + 4), so a test
  can skip a leading span that crosses into the second list and a trailing span
  while keeping blocks in the middle;
* text and image token counts differ (7 text tokens vs. 16-24 image tokens);
* where a text mask exists, sample ``b`` pads its last ``1 + b % 2`` text tokens,
  so batches of 2+ have unequal effective text lengths;
* ``TinyCase.inputs(seed, batch)`` draws everything from a ``torch.Generator``
  seeded with ``seed``: same seed -> bitwise identical kwargs.

No diffusers layer in these twelve families is zero-initialised at construction
(checked in diffusers 0.42.1). Two families have bias-free adaLN modulation fed by
a small timestep embedding, so a fresh model's gates are ~0.05 and blocks and text
barely register (AuraFlow: swapping the text moved the output by 3e-4 relative);
``build_tiny`` scales those modulation weights up deterministically (see
``_amplify``). ``tests/test_tiny_models.py`` verifies that the output depends on
the text and that replacing any single block with identity changes the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import diffusers
import torch

FAMILIES: tuple[str, ...] = (
    "FluxTransformer2DModel",
    "Flux2Transformer2DModel",
    "SD3Transformer2DModel",
    "SanaTransformer2DModel",
    "QwenImageTransformer2DModel",
    "WanTransformer3DModel",
    "HunyuanVideoTransformer3DModel",
    "LTXVideoTransformer3DModel",
    "CogVideoXTransformer3DModel",
    "ChromaTransformer2DModel",
    "Lumina2Transformer2DModel",
    "AuraFlowTransformer2DModel",
)

TEXT_LEN = 7  # text tokens; image token counts are 16 (24 for CogVideoX)
TEXT_DIM = 24  # width of the (fake) text-encoder features
POOLED_DIM = 12  # width of the (fake) pooled text projection

InputsFn = Callable[[torch.Generator, int, torch.nn.Module], dict]


@dataclass
class TinyCase:
    """A tiny diffusers model plus a recipe for its forward kwargs.

    Attributes:
        name: the diffusers class name.
        model: the model (seed 0, fp32, eval, CPU).
        block_lists: attribute names of the main transformer-block ModuleLists,
            in execution order.
    """

    name: str
    model: torch.nn.Module
    block_lists: tuple[str, ...]
    _make_inputs: InputsFn = field(repr=False)

    def inputs(self, seed: int = 0, batch: int = 1) -> dict:
        """Fresh forward kwargs (``return_dict=False`` included) drawn from ``torch.Generator(seed)``."""
        g = torch.Generator().manual_seed(seed)
        kwargs = self._make_inputs(g, batch, self.model)
        kwargs["return_dict"] = False
        return kwargs

    def bank_samples(self, count: int, seed: int = 0) -> list[tuple[str, dict]]:
        """``(key, kwargs)`` per sample, keys ``e0, e1, …``: batch-1 inputs as a bank precompute takes them."""
        samples = []
        for index in range(count):
            kwargs = self.inputs(seed=seed + index, batch=1)
            kwargs.pop("return_dict", None)
            samples.append((f"e{index}", kwargs))
        return samples

    def output(self, result: Any) -> torch.Tensor:
        """The main output tensor of ``model(**inputs)``."""
        if isinstance(result, (tuple, list)):
            return result[0]
        return result.sample

    def blocks(self) -> list[torch.nn.Module]:
        """All main blocks, flattened in execution order."""
        return [b for attr in self.block_lists for b in getattr(self.model, attr)]


# ----------------------------------------------------------------------------- helpers


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _rand(g: torch.Generator, batch: int, scale: float = 1.0) -> torch.Tensor:
    """A per-sample timestep in (0.05, 0.95) * scale."""
    return (0.05 + 0.9 * torch.rand(batch, generator=g)) * scale


def _text_mask(batch: int, length: int = TEXT_LEN) -> torch.Tensor:
    """1/0 int64 mask: sample ``b`` pads its last ``1 + b % 2`` tokens."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, length - 1 - b % 2 :] = 0
    return mask


def _flux_ids(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FLUX.1 / Chroma position ids: txt (T, 3) zeros, img (h*w, 3) = (0, row, col)."""
    img = torch.zeros(h, w, 3)
    img[..., 1] = torch.arange(h)[:, None]
    img[..., 2] = torch.arange(w)[None, :]
    return torch.zeros(TEXT_LEN, 3), img.reshape(h * w, 3)


# ----------------------------------------------------------------------------- families
# One inputs function per family; each reads widths from model.config so that
# build_tiny overrides stay consistent. Specs are collected in _SPECS below.

_ATTN = dict(num_attention_heads=2, attention_head_dim=16)  # width 32


def _flux_inputs(g, batch, model):
    h, w = 4, 4
    txt_ids, img_ids = _flux_ids(h, w)
    kw = dict(
        hidden_states=_randn(g, batch, h * w, model.config.in_channels),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, model.config.joint_attention_dim),
        pooled_projections=_randn(g, batch, model.config.pooled_projection_dim),
        timestep=_rand(g, batch),  # model multiplies by 1000
        img_ids=img_ids,
        txt_ids=txt_ids,
    )
    if model.config.guidance_embeds:
        kw["guidance"] = torch.full((batch,), 3.5)  # model multiplies by 1000
    return kw


def _flux2_inputs(g, batch, model):
    h, w = 4, 4
    img_ids = torch.zeros(h, w, 4)  # (T, H, W, L)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    txt_ids = torch.zeros(TEXT_LEN, 4)
    txt_ids[:, 3] = torch.arange(TEXT_LEN)
    kw = dict(
        hidden_states=_randn(g, batch, h * w, model.config.in_channels),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, model.config.joint_attention_dim),
        timestep=_rand(g, batch),  # model multiplies by 1000
        img_ids=img_ids.reshape(h * w, 4),
        txt_ids=txt_ids,
    )
    if model.config.guidance_embeds:
        kw["guidance"] = torch.full((batch,), 4.0)  # model multiplies by 1000
    return kw


def _sd3_inputs(g, batch, model):
    c = model.config
    return dict(
        hidden_states=_randn(g, batch, c.in_channels, 8, 8),  # patch 2 -> 16 tokens
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.joint_attention_dim),
        pooled_projections=_randn(g, batch, c.pooled_projection_dim),
        timestep=_rand(g, batch, 1000.0),
    )


def _sana_inputs(g, batch, model):
    c = model.config
    return dict(
        hidden_states=_randn(g, batch, c.in_channels, 4, 4),  # patch 1 -> 16 tokens
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.caption_channels),
        encoder_attention_mask=_text_mask(batch),
        timestep=_rand(g, batch, 1000.0),
    )


def _qwen_inputs(g, batch, model):
    c = model.config
    h, w = 4, 4  # packed 2x2 latent patches
    return dict(
        hidden_states=_randn(g, batch, h * w, c.in_channels),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.joint_attention_dim),
        encoder_hidden_states_mask=_text_mask(batch),
        timestep=_rand(g, batch),  # time_proj scales by 1000
        img_shapes=[[(1, h, w)]] * batch,
    )


def _wan_inputs(g, batch, model):
    c = model.config
    return dict(
        hidden_states=_randn(g, batch, c.in_channels, 2, 4, 8),  # (B, C, F, H, W) -> 16 tokens
        timestep=_rand(g, batch, 1000.0),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.text_dim),
    )


def _hunyuan_inputs(g, batch, model):
    c = model.config
    kw = dict(
        hidden_states=_randn(g, batch, c.in_channels, 2, 4, 8),  # (B, C, F, H, W) -> 16 tokens
        timestep=_rand(g, batch, 1000.0),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.text_embed_dim),
        encoder_attention_mask=_text_mask(batch),
        pooled_projections=_randn(g, batch, c.pooled_projection_dim),
    )
    if c.guidance_embeds:
        kw["guidance"] = torch.full((batch,), 6000.0)  # pipeline passes scale * 1000
    return kw


def _ltx_inputs(g, batch, model):
    c = model.config
    f, h, w = 2, 2, 4  # latent video, already patchified -> 16 tokens
    return dict(
        hidden_states=_randn(g, batch, f * h * w, c.in_channels),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.caption_channels),
        timestep=_rand(g, batch, 1000.0),
        encoder_attention_mask=_text_mask(batch),
        num_frames=f,
        height=h,
        width=w,
        rope_interpolation_scale=(8 / 25, 32.0, 32.0),  # (temporal ratio / fps, spatial, spatial)
    )


def _cogvideox_inputs(g, batch, model):
    c = model.config
    # (B, F, C, H, W); matches sample_* in the config so the cached sincos table is used.
    # The text length must equal max_text_seq_length: the sincos table spans text + video tokens.
    return dict(
        hidden_states=_randn(g, batch, 2, c.in_channels, 6, 8),  # patch 2 -> 2*3*4 = 24 tokens
        encoder_hidden_states=_randn(g, batch, c.max_text_seq_length, c.text_embed_dim),
        timestep=_rand(g, batch, 1000.0),
    )


def _chroma_inputs(g, batch, model):
    h, w = 4, 4
    txt_ids, img_ids = _flux_ids(h, w)
    # Like ChromaPipeline: float text mask extended with ones for the image tokens. The blocks
    # turn it into a float (B, 1, N, N) outer product, which SDPA applies as an additive 0/1
    # bias, not as a hard mask -- same as the pipeline does.
    mask = torch.cat([_text_mask(batch).float(), torch.ones(batch, h * w)], dim=1)
    return dict(
        hidden_states=_randn(g, batch, h * w, model.config.in_channels),
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, model.config.joint_attention_dim),
        timestep=_rand(g, batch),  # model multiplies by 1000
        img_ids=img_ids,
        txt_ids=txt_ids,
        attention_mask=mask,
    )


def _lumina2_inputs(g, batch, model):
    c = model.config
    return dict(
        hidden_states=_randn(g, batch, c.in_channels, 8, 8),  # patch 2 -> 16 tokens
        timestep=_rand(g, batch),  # Lumina2 pipeline passes 1 - t / 1000
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.cap_feat_dim),
        encoder_attention_mask=_text_mask(batch),
    )


def _auraflow_inputs(g, batch, model):
    c = model.config
    return dict(
        hidden_states=_randn(g, batch, c.in_channels, 8, 8),  # patch 2 -> 16 tokens
        encoder_hidden_states=_randn(g, batch, TEXT_LEN, c.joint_attention_dim),
        timestep=_rand(g, batch),  # time_step_embed scales by 1000
    )


def _amplify(*suffixes: str, factor: float) -> Callable[[torch.nn.Module], None]:
    """Multiply the weight of every Linear whose qualified name ends with one of ``suffixes``."""

    def tweak(model: torch.nn.Module) -> None:
        with torch.no_grad():
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Linear) and name.endswith(suffixes):
                    module.weight.mul_(factor)

    return tweak


class _Spec(NamedTuple):
    config: dict
    block_lists: tuple[str, ...]
    make_inputs: InputsFn
    tweak: Callable[[torch.nn.Module], None] | None = None  # deterministic post-init adjustment


_TWO_LISTS = ("transformer_blocks", "single_transformer_blocks")

_SPECS: dict[str, _Spec] = {
    "FluxTransformer2DModel": _Spec(
        dict(
            **_ATTN, in_channels=16, num_layers=3, num_single_layers=4,
            joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        ),
        _TWO_LISTS,
        _flux_inputs,
    ),
    "Flux2Transformer2DModel": _Spec(
        dict(
            **_ATTN, in_channels=16, num_layers=3, num_single_layers=4,
            joint_attention_dim=TEXT_DIM, timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4), guidance_embeds=True,
        ),
        _TWO_LISTS,
        _flux2_inputs,
        # bias-free modulation: text/block effects ~1-2% untouched, ~5-10% after x4
        _amplify("modulation_img.linear", "modulation_txt.linear", "single_stream_modulation.linear", factor=4.0),
    ),
    "SD3Transformer2DModel": _Spec(
        # SD3.5-style: qk rms_norm and dual attention in the first blocks; the last
        # block is context_pre_only (returns (None, hidden_states)).
        dict(
            **_ATTN, sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=4,
            joint_attention_dim=TEXT_DIM, caption_projection_dim=32, pooled_projection_dim=POOLED_DIM,
            pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0, 1),
        ),
        ("transformer_blocks",),
        _sd3_inputs,
    ),
    "SanaTransformer2DModel": _Spec(
        dict(
            **_ATTN, in_channels=4, out_channels=4, num_layers=4,
            num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32,
            caption_channels=TEXT_DIM, sample_size=4, patch_size=1,
        ),
        ("transformer_blocks",),
        _sana_inputs,
    ),
    "QwenImageTransformer2DModel": _Spec(
        dict(
            **_ATTN, patch_size=2, in_channels=16, out_channels=4, num_layers=4,
            joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6),
        ),
        ("transformer_blocks",),
        _qwen_inputs,
    ),
    "WanTransformer3DModel": _Spec(
        dict(
            **_ATTN, patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=TEXT_DIM,
            freq_dim=32, ffn_dim=64, num_layers=4, rope_max_seq_len=32,
        ),
        ("blocks",),
        _wan_inputs,
    ),
    "HunyuanVideoTransformer3DModel": _Spec(
        dict(
            **_ATTN, in_channels=4, out_channels=4, num_layers=3, num_single_layers=4,
            num_refiner_layers=1, mlp_ratio=2.0, patch_size=2, patch_size_t=1,
            text_embed_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM, rope_axes_dim=(4, 6, 6),
            guidance_embeds=True,
        ),
        _TWO_LISTS,
        _hunyuan_inputs,
    ),
    "LTXVideoTransformer3DModel": _Spec(
        dict(
            **_ATTN, in_channels=8, out_channels=8, cross_attention_dim=32, num_layers=4,
            caption_channels=TEXT_DIM,
        ),
        ("transformer_blocks",),
        _ltx_inputs,
    ),
    "CogVideoXTransformer3DModel": _Spec(
        dict(
            **_ATTN, in_channels=4, out_channels=4, time_embed_dim=16, text_embed_dim=TEXT_DIM,
            num_layers=4, sample_width=8, sample_height=6, sample_frames=5, patch_size=2,
            max_text_seq_length=TEXT_LEN,
        ),
        ("transformer_blocks",),
        _cogvideox_inputs,
    ),
    "ChromaTransformer2DModel": _Spec(
        dict(
            **_ATTN, in_channels=16, num_layers=3, num_single_layers=4,
            joint_attention_dim=TEXT_DIM, axes_dims_rope=(4, 6, 6),
            approximator_num_channels=16, approximator_hidden_dim=32, approximator_layers=2,
        ),
        _TWO_LISTS,
        _chroma_inputs,
    ),
    "Lumina2Transformer2DModel": _Spec(
        # num_kv_heads=1 exercises grouped-query attention.
        dict(
            sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=4,
            num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
            axes_dim_rope=(4, 6, 6), axes_lens=(32, 32, 32), cap_feat_dim=TEXT_DIM,
        ),
        ("layers",),
        _lumina2_inputs,
    ),
    "AuraFlowTransformer2DModel": _Spec(
        # The model prepends 8 learned register tokens to the text stream (15 text vs 16 image).
        dict(
            **_ATTN, sample_size=8, patch_size=2, in_channels=4, out_channels=4,
            num_mmdit_layers=3, num_single_dit_layers=4, joint_attention_dim=TEXT_DIM,
            caption_projection_dim=32, pos_embed_max_size=16,
        ),
        ("joint_transformer_blocks", "single_transformer_blocks"),
        _auraflow_inputs,
        # bias-free AdaLayerNormZero: text effect 3e-4 untouched, ~5% after x8
        _amplify("norm1.linear", "norm1_context.linear", factor=8.0),
    ),
}


def build_tiny(name: str, **overrides: Any) -> TinyCase:
    """Build the tiny ``diffusers.<name>`` model; ``overrides`` update its config kwargs."""
    if name not in _SPECS:
        raise KeyError(f"unknown family {name!r}; expected one of {FAMILIES}")
    spec = _SPECS[name]
    cls = getattr(diffusers, name)
    default_dtype = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.set_default_dtype(torch.float32)
        try:
            model = cls(**{**spec.config, **overrides})
        finally:
            torch.set_default_dtype(default_dtype)
    if spec.tweak is not None:
        spec.tweak(model)
    # No .to(dtype=...): that would also cast buffers diffusers keeps in float64 on purpose
    # (CogVideoX's sincos patch_embed.pos_embedding), and ModelMixin.to logs a warning.
    model.eval()
    return TinyCase(name=name, model=model, block_lists=spec.block_lists, _make_inputs=spec.make_inputs)
