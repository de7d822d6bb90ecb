"""The quality benchmark's training path: every recipe trains, saves and reloads a LoRA as a user would."""

import tempfile

import pytest
import torch

from blockskip.shapes import HELD_OUT_SUBJECTS, build_shapes_dit
from blockskip.shapes.critic import AttributeCritic
from blockskip.shapes.evaluation import score_samples, subject_prompts
from blockskip.shapes.personalize import Recipe, reference_set, resolutions, train_subject_lora


@pytest.fixture(scope="module")
def references():
    return reference_set(HELD_OUT_SUBJECTS[1], count=3)


def _lora_blocks(model):
    return {name.split(".lora_")[0].rsplit(".", 2)[0] for name, _ in model.named_parameters() if "lora_" in name}


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe("full", resolution="full"),
        Recipe("resize", resolution="resize"),
        Recipe("patches"),
        Recipe("cached", skip={"leading": 2, "trailing": 1}, residuals="cached"),
        Recipe("online", skip={"leading": 2, "trailing": 1}, residuals="online"),
        Recipe("none", skip={"leading": 2, "trailing": 1}, residuals="none"),
    ],
    ids=lambda r: r.name,
)
def test_every_recipe_trains_and_reloads_into_the_full_model(recipe, references, tmp_path):
    images, captions = references
    model = build_shapes_dit()
    tuned, stats = train_subject_lora(model, recipe, images, captions, steps=3, batch_size=2, work_dir=tmp_path)
    assert stats["memory_bytes"] > 0 and stats["final_loss"] > 0
    # The returned model is the full architecture: every block in place, LoRA only where it trained.
    assert type(tuned.transformer_blocks[0]).__name__ == "FluxTransformerBlock"
    assert type(tuned.single_transformer_blocks[-1]).__name__ == "FluxSingleTransformerBlock"
    blocks = _lora_blocks(tuned)
    if recipe.skip:
        assert stats["skipped_blocks"] == 3
        assert not any(b.startswith(("transformer_blocks.0.", "transformer_blocks.1.", "single_transformer_blocks.7.")) for b in blocks)
        assert (tmp_path / "lora" / "blockskip_plan.json").exists()
    else:
        assert any(b.startswith("transformer_blocks.0.") for b in blocks)
    if recipe.residuals == "online" and recipe.skip:
        assert stats["reload_error"] < 1e-5
    if recipe.residuals == "cached" and recipe.skip:
        assert (tmp_path / "bank").exists()
    # The input model is left as it was.
    assert not any("lora_" in name for name, _ in model.named_parameters())


def test_skipping_lowers_measured_memory_and_leaves_no_scratch(references, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the scratch folders would stay behind
    images, captions = references
    model = build_shapes_dit()
    _, full = train_subject_lora(model, Recipe("full", resolution="full"), images, captions, steps=2, batch_size=2)
    _, skipped = train_subject_lora(model, Recipe("skip", skip={"ratio": 0.5}), images, captions, steps=2, batch_size=2)
    assert skipped["memory_bytes"] < 0.6 * full["memory_bytes"]
    assert skipped["trainable_parameters"] < full["trainable_parameters"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("blockskip")] == []  # torch may cache here


def test_scores_are_bounded_and_match_the_prompt_count(references):
    images, _ = references
    subject = HELD_OUT_SUBJECTS[1]
    prompts = subject_prompts(subject)
    scores = score_samples(AttributeCritic().eval(), torch.rand(len(prompts), 3, 32, 32) * 2 - 1, prompts, images, subject)
    assert set(scores) == {"subject_similarity", "image_similarity", "prompt_adherence", "subject_accuracy"}
    assert all(-1 <= value <= 1 for value in scores.values())
    assert 0 <= scores["prompt_adherence"] <= 1


def test_references_at_64_px_train_at_64_and_at_half_side(tmp_path):
    images, captions = reference_set(HELD_OUT_SUBJECTS[1], count=2, size=64)
    assert images.shape == (2, 3, 64, 64)
    schedules = resolutions(64)
    assert (schedules["full"].min_size, schedules["full"].max_size) == (64, 64)
    assert all((schedules[name].min_size, schedules[name].max_size) == (32, 64) for name in ("resize", "patches"))
    model = build_shapes_dit()
    recipe = Recipe("online", skip={"leading": 2, "trailing": 1})
    assert recipe.plan(side=64).patches.min_size == 32
    _, stats = train_subject_lora(model, recipe, images, captions, steps=2, batch_size=2, work_dir=tmp_path)
    assert stats["reload_error"] < 1e-5
    _, full = train_subject_lora(model, Recipe("full", resolution="full"), images, captions, steps=2, batch_size=2, work_dir=tmp_path / "full")
    assert stats["memory_bytes"] < full["memory_bytes"]


def test_samples_drawn_at_64_px_are_scored_as_the_critic_sees_them_at_32():
    subject = HELD_OUT_SUBJECTS[2]
    prompts = subject_prompts(subject)
    critic = AttributeCritic().eval()
    samples, references = torch.rand(len(prompts), 3, 64, 64) * 2 - 1, reference_set(subject, count=2, size=64)[0]
    pooled = [torch.nn.functional.avg_pool2d(images, 2) for images in (samples, references)]
    assert score_samples(critic, samples, prompts, references, subject) == score_samples(critic, pooled[0], prompts, pooled[1], subject)
