"""The selection probe's attention masking: exact semantics, per family, reversible."""

import inspect

import pytest
import torch
import torch.nn.functional as F

from blockskip.selection.masking import (
    IMAGE_FIRST,
    TEXT_FIRST,
    MaskingError,
    TextAttentionMask,
    _JointMaskMode,
    mask_text_attention,
    text_attention_for,
)
from tiny_models import FAMILIES, build_tiny

# Lumina2 runs per-sample caption lengths inside one padded sequence; the probe refuses it.
MASKABLE = [family for family in FAMILIES if family != "Lumina2Transformer2DModel"]


def _run(case, inputs):
    with torch.no_grad():
        return case.output(case.model(**inputs))


def _with_other_text(inputs):
    changed = dict(inputs)
    text = inputs["encoder_hidden_states"]
    changed["encoder_hidden_states"] = torch.randn(text.shape, generator=torch.Generator().manual_seed(7))
    return changed


@pytest.mark.parametrize("family", MASKABLE)
def test_masking_semantics_per_family(family):
    case = build_tiny(family)
    inputs = case.inputs(seed=2, batch=2)
    other_text = _with_other_text(inputs)
    reference, reference_other = _run(case, inputs), _run(case, other_text)
    assert not torch.equal(reference, reference_other)  # the text matters to begin with

    mask = mask_text_attention(case.model)
    assert torch.equal(_run(case, inputs), reference)  # installed, nothing masked: bit-identical

    mask.masked = range(mask.num_blocks)
    masked = _run(case, inputs)
    assert torch.isfinite(masked).all()
    assert torch.equal(masked, _run(case, other_text))  # every block masked: the text no longer matters
    assert not torch.equal(masked, reference)

    with mask.masking([mask.num_blocks // 2]):
        assert not torch.equal(_run(case, inputs), reference)
    assert mask.masked == frozenset(range(mask.num_blocks))  # the context manager restores the set

    mask.remove()
    assert torch.equal(_run(case, inputs), reference)  # removal: bit-identical again


def test_masking_is_by_global_block_index():
    """Masking block 3 of tiny FLUX (single_transformer_blocks.0) leaves blocks 0-2 untouched."""
    case = build_tiny("FluxTransformer2DModel")
    inputs = case.inputs(seed=4, batch=1)
    blocks = case.blocks()
    outputs = {}
    hooks = [
        block.register_forward_hook(lambda module, args, output, index=index: outputs.__setitem__(index, output[1]))
        for index, block in enumerate(blocks)
    ]
    _run(case, inputs)
    reference = dict(outputs)
    with mask_text_attention(case.model, blocks=[3]):
        _run(case, inputs)
    for hook in hooks:
        hook.remove()
    assert all(torch.equal(outputs[index], reference[index]) for index in range(3))
    assert not torch.equal(outputs[3], reference[3])


@pytest.mark.parametrize("order", [TEXT_FIRST, IMAGE_FIRST])
@pytest.mark.parametrize("existing", [None, "bool", "float"])
def test_joint_mask_hides_text_from_image_queries_only(order, existing):
    text, image, generator = 3, 5, torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, text + image, 4, generator=generator) for _ in range(3))
    text_slice = slice(0, text) if order == TEXT_FIRST else slice(image, text + image)
    image_slice = slice(text, text + image) if order == TEXT_FIRST else slice(0, image)
    keep_keys = torch.ones(2, 1, 1, text + image, dtype=torch.bool)
    keep_keys[1, ..., text_slice.start] = False  # a padded text token in sample 1
    additive = torch.zeros(keep_keys.shape).masked_fill(~keep_keys, -1e9)
    mask = {None: None, "bool": keep_keys, "float": additive}[existing]

    mode = _JointMaskMode(text, image, order)
    with mode:
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert mode.masked_calls == 1
    full = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    image_only = F.scaled_dot_product_attention(q[:, :, image_slice], k[:, :, image_slice], v[:, :, image_slice])
    torch.testing.assert_close(masked[:, :, text_slice], full[:, :, text_slice], rtol=0, atol=0)
    torch.testing.assert_close(masked[:, :, image_slice], image_only, rtol=1e-6, atol=1e-6)


def test_joint_mask_leaves_other_attention_calls_alone():
    q = torch.randn(1, 2, 6, 4)
    mode = _JointMaskMode(3, 5, TEXT_FIRST)  # expects 8 tokens
    with mode:
        out = F.scaled_dot_product_attention(q, q, q)
    assert torch.equal(out, F.scaled_dot_product_attention(q, q, q))
    assert mode.masked_calls == 0 and mode.other_lengths == [6]


def test_cross_attention_families_zero_the_output_instead_of_masking_every_key():
    case = build_tiny("SanaTransformer2DModel")
    assert text_attention_for(case.blocks()[0]).kind == "cross"
    before, after = [], []
    attention = case.blocks()[1].attn2
    # Forward hooks run in registration order, each seeing what the previous one returned.
    hooks = [attention.register_forward_hook(lambda module, args, output: before.append(output))]
    with mask_text_attention(case.model, blocks=[1]):
        hooks.append(attention.register_forward_hook(lambda module, args, output: after.append(output)))
        _run(case, case.inputs(seed=1, batch=2))
    for hook in hooks:
        hook.remove()
    assert torch.isfinite(before[0]).all() and before[0].abs().sum() > 0  # the real cross-attention output
    assert torch.equal(after[0], torch.zeros_like(before[0]))  # what the block adds: nothing


def test_pixart_style_blocks_without_a_registered_layout():
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(0)
    model = PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=3,
        cross_attention_dim=16, caption_channels=12, sample_size=8, patch_size=2,
        norm_type="ada_norm_single", use_additional_conditions=False,
    ).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500])

    def run(text):
        with torch.no_grad():
            return model(x, encoder_hidden_states=text, timestep=t, return_dict=False)[0]

    texts = torch.randn(1, 5, 12), torch.randn(1, 5, 12)
    assert not torch.equal(run(texts[0]), run(texts[1]))
    with mask_text_attention(model, blocks=range(3), block_modules=list(model.transformer_blocks)):
        assert torch.equal(run(texts[0]), run(texts[1]))


def test_unknown_blocks_and_skipped_models_are_refused():
    case = build_tiny("Lumina2Transformer2DModel")
    with pytest.raises(MaskingError, match="register_text_attention\\('Lumina2TransformerBlock'"):
        mask_text_attention(case.model)

    from blockskip import apply_block_skip, remove_block_skip

    case = build_tiny("SanaTransformer2DModel")
    apply_block_skip(case.model, {"skip": {"leading": 1}})
    with pytest.raises(MaskingError, match="remove_block_skip"):
        mask_text_attention(case.model)
    remove_block_skip(case.model)


def test_out_of_range_blocks_are_refused():
    mask = TextAttentionMask(build_tiny("SanaTransformer2DModel").model)
    with pytest.raises(IndexError, match=r"\[4\] are out of range for 4 blocks"):
        mask.masked = [0, 4]
    mask.remove()


class _NoSdpaProcessor:
    """A processor that computes attention by hand (as a non-SDPA backend would)."""

    def __init__(self, original):
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        original = F.scaled_dot_product_attention

        def by_hand(query, key, value, attn_mask=None, **kwargs):
            weights = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).softmax(-1)
            return weights @ value

        F.scaled_dot_product_attention = by_hand
        try:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        finally:
            F.scaled_dot_product_attention = original


def test_a_backend_that_bypasses_sdpa_fails_loudly():
    case = build_tiny("FluxTransformer2DModel")
    attention = case.blocks()[0].attn
    attention.processor = _NoSdpaProcessor(attention.processor)
    assert "image_rotary_emb" in inspect.signature(attention.processor.__call__).parameters
    mask = mask_text_attention(case.model)
    _run(case, case.inputs())  # unmasked: fine
    mask.masked = [0]
    with pytest.raises(MaskingError, match="no scaled_dot_product_attention call"):
        _run(case, case.inputs())
    mask.remove()
