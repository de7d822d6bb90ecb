"""apply_block_skip on every supported family: exactness, removal, LoRA placement, gradients.

Real diffusers classes with tiny configs (tests/tiny_models.py), unequal image and text token
counts, batch 2 (so masked families also see unequal text lengths).
"""

import pytest
import torch
from peft import LoraConfig

from blockskip import apply_block_skip, get_layout, lora_target_modules, remove_block_skip
from blockskip.families.layouts import SUPPORTED_MODELS
from tiny_models import FAMILIES, build_tiny


def _both_spans_plan(case):
    """Leading and trailing spans; for two-list models the leading span crosses into the second list."""
    lengths = [len(getattr(case.model, name)) for name in case.block_lists]
    if len(lengths) == 2:
        return {"skip": {"leading": lengths[0] + 1, "trailing": 2}}
    return {"skip": {"leading": 1, "trailing": 1}}


def _leading_only_plan(case):
    lengths = [len(getattr(case.model, name)) for name in case.block_lists]
    return {"skip": {"leading": lengths[0] + 1 if len(lengths) == 2 else 2}}


def _relative_error(value, reference):
    return float((value - reference).norm() / reference.norm())


def _block_linear_suffixes(case):
    """Suffixes like `to_q` or `to_out.0` that target every Linear inside the blocks."""
    suffixes = set()
    for block in case.blocks():
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                parts = name.split(".")
                suffixes.add(".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1])
    return sorted(suffixes)


def test_every_required_family_has_a_layout():
    assert set(FAMILIES) <= set(SUPPORTED_MODELS)


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_matches_the_forward(family):
    case = build_tiny(family)
    assert tuple(block_list.name for block_list in get_layout(case.model)) == case.block_lists


@pytest.mark.parametrize("family", FAMILIES)
def test_online_exact_and_removal_bit_identical(family):
    case = build_tiny(family)
    inputs = case.inputs(seed=3, batch=2)
    with torch.no_grad():
        reference = case.output(case.model(**inputs))

    handle = apply_block_skip(case.model, _both_spans_plan(case))
    assert {span.position for span in handle.spans} == {"leading", "trailing"}
    assert len(handle.kept_block_names()) >= 1
    with torch.no_grad():
        skipped = case.output(case.model(**inputs))
    assert _relative_error(skipped, reference) <= 1e-5

    # With zero-initialised LoRA and gradients on, trailing spans take the residual path
    # (input + detached Δ); the output must not move.
    case.model.add_adapter(LoraConfig(r=2, target_modules=lora_target_modules(case.model)))
    training_output = case.output(case.model(**inputs))
    assert training_output.requires_grad
    assert _relative_error(training_output.detach(), reference) <= 1e-5
    case.model.delete_adapters("default")

    remove_block_skip(case.model)
    with torch.no_grad():
        restored = case.output(case.model(**inputs))
    assert torch.equal(restored, reference)


@pytest.mark.parametrize("family", FAMILIES)
def test_naive_skip_changes_the_output(family):
    case = build_tiny(family)
    inputs = case.inputs(seed=1, batch=2)
    with torch.no_grad():
        reference = case.output(case.model(**inputs))
    apply_block_skip(case.model, {**_both_spans_plan(case), "residuals": {"mode": "none"}})
    with torch.no_grad():
        naive = case.output(case.model(**inputs))
    assert _relative_error(naive, reference) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_lands_only_in_kept_blocks(family):
    case = build_tiny(family)
    suffixes = _block_linear_suffixes(case)
    handle = apply_block_skip(case.model, _both_spans_plan(case))
    case.model.add_adapter(LoraConfig(r=2, target_modules=suffixes))
    lora_blocks = {
        ".".join(name.split(".")[:2]) for name, _ in case.model.named_parameters() if "lora_" in name
    }
    kept = set(handle.kept_block_names())
    skipped = set(handle.skipped_block_names())
    assert lora_blocks & kept == kept
    assert not lora_blocks & skipped
    # LoRA parameter names keep the full model's block indices.
    assert {name for name in lora_blocks if name.split(".")[0] in case.block_lists} == kept


@pytest.mark.parametrize("family", FAMILIES)
def test_leading_skip_gradients_equal_full_training(family):
    """With only a leading skip, Δ is exact, so LoRA gradients must match full training."""
    skipped_case, full_case = build_tiny(family), build_tiny(family)
    apply_block_skip(skipped_case.model, _leading_only_plan(skipped_case))
    targets = lora_target_modules(skipped_case.model)
    config = dict(r=2, lora_alpha=2, target_modules=targets, init_lora_weights=False)
    torch.manual_seed(0)
    skipped_case.model.add_adapter(LoraConfig(**config))
    full_case.model.add_adapter(LoraConfig(**config))
    lora = {name: p for name, p in skipped_case.model.named_parameters() if p.requires_grad}
    full_lora = {name: p for name, p in full_case.model.named_parameters() if p.requires_grad}
    assert lora.keys() == full_lora.keys()
    with torch.no_grad():
        for name, parameter in full_lora.items():
            parameter.copy_(lora[name])

    inputs = skipped_case.inputs(seed=5, batch=2)
    for case in (skipped_case, full_case):
        case.output(case.model(**inputs)).square().mean().backward()
    for name, parameter in lora.items():
        expected = full_lora[name].grad
        # Layers whose output the model never reads (the last block's text stream) get no gradient in either.
        assert (parameter.grad is None) == (expected is None), name
        if expected is None:
            continue
        error = float((parameter.grad - expected).norm() / expected.norm().clamp_min(1e-12))
        assert error <= 1e-5, f"{name}: relative gradient error {error:.2e}"
