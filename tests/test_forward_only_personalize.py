"""Forward-only personalization on the shapes world: each method trains what it says and only that."""

import pytest
import torch

from blockskip.shapes import HELD_OUT_SUBJECTS, build_shapes_dit
from blockskip.shapes.evaluation import TOKEN
from blockskip.shapes.forward_only import ForwardOnlyRecipe, train_forward_only
from blockskip.shapes.personalize import reference_set
from blockskip.shapes.text import ShapesTextEncoder
from blockskip.zeroth_order import SelectiveOptimization


@pytest.fixture(scope="module")
def references():
    return reference_set(HELD_OUT_SUBJECTS[3], count=2)


def _lora_names(model):
    return [name for name, _ in model.named_parameters() if "lora_" in name]


def test_zeroth_order_lora_runs_forwards_only_and_reloads_into_the_full_model(references, tmp_path):
    images, captions = references
    model, calls = build_shapes_dit(), []
    tuned, _, stats = train_forward_only(model, ForwardOnlyRecipe("ZO", method="zo"), images, captions, steps=3, batch_size=2,
                                         callback=lambda step, seconds, *_: calls.append((step, seconds)), work_dir=tmp_path)
    assert (stats["forwards"], stats["backwards"], stats["steps_by_kind"]) == (6, 0, {"bp": 0, "zo": 3})
    assert [step for step, _ in calls] == [1, 2, 3] and calls[-1][1] == pytest.approx(stats["train_seconds"])
    assert any(name.startswith("transformer_blocks.0.") for name in _lora_names(tuned))
    assert not _lora_names(model)  # the input model is left as it was


def test_selective_steps_follow_the_selector_and_skip_keeps_lora_out_of_skipped_blocks(references, tmp_path):
    images, captions = references
    always_bp = SelectiveOptimization(probability=lambda t, s: 1.0)
    recipe = ForwardOnlyRecipe("BP-low / ZO-high + skip", method="selective", skip={"leading": 2, "trailing": 1})
    tuned, _, stats = train_forward_only(build_shapes_dit(), recipe, images, captions, steps=2, batch_size=2, selector=always_bp, work_dir=tmp_path)
    assert stats["steps_by_kind"] == {"bp": 2, "zo": 0} and stats["backwards"] == 2 and stats["skipped_blocks"] == 3
    names = _lora_names(tuned)
    assert names and not any(n.startswith(("transformer_blocks.0.", "transformer_blocks.1.", "single_transformer_blocks.7.")) for n in names)
    never_bp = SelectiveOptimization(probability=lambda t, s: 0.0)
    _, _, zo_stats = train_forward_only(build_shapes_dit(), recipe, images, captions, steps=2, batch_size=2, selector=never_bp)
    assert zo_stats["steps_by_kind"] == {"bp": 0, "zo": 2} and zo_stats["backwards"] == 0
    # A ZO step's measured peak is below a backprop step's: forward-only memory.
    assert zo_stats["peak_bytes_by_kind"]["zo"] < stats["peak_bytes_by_kind"]["bp"]


def test_zeroth_order_textual_inversion_changes_only_the_new_words_vector(references):
    images, captions = references
    model = build_shapes_dit()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    tuned, encoder, stats = train_forward_only(model, ForwardOnlyRecipe("ZO TI", method="textual_inversion"), images, captions,
                                               steps=3, batch_size=2)
    assert tuned is model and all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    fresh = ShapesTextEncoder()
    assert not torch.equal(encoder.token_vector(TOKEN), fresh.token_vector(TOKEN))
    assert torch.equal(encoder.word_vector("circle"), fresh.word_vector("circle"))
    assert stats["trainable_parameters"] == 64 and stats["forwards"] == 3 * 3  # forward estimator, two queries: 1 + 2 a step


def test_a_recipe_that_cannot_mean_anything_is_refused():
    with pytest.raises(ValueError, match="method is one of"):
        ForwardOnlyRecipe("x", method="sgd")
    with pytest.raises(ValueError, match="textual inversion trains no LoRA"):
        ForwardOnlyRecipe("x", method="textual_inversion", skip={"ratio": 0.3})
