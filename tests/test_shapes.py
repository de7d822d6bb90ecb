"""The shapes world: procedural scenes, the frozen text encoder, the shipped shapes DiT and critic."""

import json
from collections import Counter

import pytest
import torch

from blockskip.shapes import (
    HELD_OUT_SUBJECTS,
    ShapesTextEncoder,
    build_shapes_dit,
    generate,
    load_shapes_dit,
    model_card,
    pack,
    render,
    unpack,
)
from blockskip.shapes.critic import load_critic, targets
from blockskip.shapes.model import SHAPES_DIT_CONFIG, WEIGHTS_FILE
from blockskip.shapes.scenes import (
    VOCABULARY,
    caption,
    sample_identity,
    sample_scene,
    subject_scene,
)


def test_scenes_are_deterministic_and_in_range():
    first = sample_scene(torch.Generator().manual_seed(3))
    again = sample_scene(torch.Generator().manual_seed(3))
    assert first == again and torch.equal(render(first), render(again))
    image = render(first)
    assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert 1 <= len(first.things) <= 3
    assert [thing.x for thing in first.things] == sorted(thing.x for thing in first.things)


def test_pretraining_never_draws_a_held_out_subject():
    generator = torch.Generator().manual_seed(0)
    held_out = {subject.identity for subject in HELD_OUT_SUBJECTS}
    drawn = {sample_identity(generator) for _ in range(5000)}
    assert not drawn & held_out
    assert len(drawn) > 500  # and it still covers the identity space widely
    allowed = {sample_identity(generator, held_out=True) for _ in range(20000)}
    assert allowed & held_out


def test_captions_use_the_vocabulary_and_name_the_subject():
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        words = caption(sample_scene(generator)).split()
        assert set(words) <= set(VOCABULARY) and len(words) <= 20
    scene = subject_scene(HELD_OUT_SUBJECTS[0], generator, extra=1)
    text = caption(scene, subject_token="sks")
    assert text.startswith("large sks circle") or " large sks circle " in text
    assert "red" not in text.split()[:3]


def test_text_encoder_tells_word_order_apart():
    encoder = ShapesTextEncoder()
    tokens, pooled = encoder(["large red solid circle on blue", "large blue solid circle on red", "sks"])
    assert not torch.allclose(tokens[0], tokens[1])
    assert tokens[2, 1:].abs().sum() == 0 and tokens[2, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="more than max_tokens"):
        encoder([" ".join(["red"] * 21)])


def test_pack_round_trip():
    images = torch.randn(2, 3, 32, 16)
    tokens, ids = pack(images)
    assert tokens.shape == (2, 32, 48) and ids.shape == (32, 3)
    assert torch.equal(unpack(tokens, 32, 16), images)


def test_shipped_checkpoint_matches_its_card():
    card = model_card()
    assert WEIGHTS_FILE.stat().st_size < 20e6
    assert card["config"] == json.loads(json.dumps(SHAPES_DIT_CONFIG))
    for key in ("command", "images_seen", "training_minutes", "steps"):
        assert card[key]
    model = load_shapes_dit()
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    assert not any(p.requires_grad for p in model.parameters())


def test_untrained_architecture_differs_from_the_checkpoint():
    trained, untrained = load_shapes_dit(), build_shapes_dit()
    name, weight = next(iter(trained.state_dict().items()))
    assert not torch.allclose(weight, untrained.state_dict()[name])


def test_critic_reads_fresh_scenes():
    from blockskip.shapes.critic import COLOURS, read_colours

    critic = load_critic()
    generator = torch.Generator().manual_seed(424242)
    scenes = [sample_scene(generator, held_out=True) for _ in range(300)]
    out = critic(torch.stack([render(s) for s in scenes]))
    target = targets(scenes)
    accuracy = {head: float((out[head].argmax(1) == target[head]).float().mean()) for head in ("background", "shape", "pattern")}
    truth = [{list(COLOURS)[i] for i in row.nonzero().flatten().tolist()} for row in target["colours"]]
    accuracy["colours"] = sum(a == b for a, b in zip(read_colours(out["colours"], target["pattern"]), truth)) / len(truth)
    assert accuracy["background"] > 0.97 and accuracy["shape"] > 0.8 and accuracy["pattern"] > 0.8 and accuracy["colours"] > 0.75, accuracy


def test_shipped_checkpoint_was_pretrained_at_every_side_the_benchmark_uses():
    from blockskip.shapes import pretrained_sides

    assert {32, 64} <= set(pretrained_sides())
    assert pretrained_sides(WEIGHTS_FILE.with_name("absent.safetensors")) == (32,)  # no card: the scenes' own side


@pytest.mark.parametrize("size", [32, 64])
def test_pretrained_model_follows_captions(size):
    """Backgrounds and main-object colours the prompt asks for are what the critic reads back, at 32 and 64 px."""
    from blockskip.shapes.critic import critic_view

    model, critic, encoder = load_shapes_dit(), load_critic(), ShapesTextEncoder()
    prompts = [f"large {colour} solid {shape} on {bg}" for colour, shape, bg in
               [("red", "circle", "navy"), ("blue", "square", "beige"), ("yellow", "triangle", "maroon"), ("green", "ring", "gray")]] * 2
    samples = generate(model, encoder, prompts, seed=0, steps=16, size=size)
    assert samples.shape[-1] == size
    out = critic(critic_view(samples))
    from blockskip.shapes.critic import SCENE_HEADS, read_colours
    backgrounds = [SCENE_HEADS["background"][i] for i in out["background"].argmax(1)]
    colours = read_colours(out["colours"], out["pattern"].argmax(1))
    hits = Counter()
    for prompt, bg, colour in zip(prompts, backgrounds, colours):
        words = prompt.split()
        hits["background"] += bg == words[-1]
        hits["colour"] += words[1] in colour
    assert hits["background"] >= 6 and hits["colour"] >= 5, hits


def test_critic_reads_every_held_out_subject_from_its_references():
    from blockskip.shapes.evaluation import score_samples, subject_prompts
    from blockskip.shapes.personalize import reference_set

    critic = load_critic()
    for subject in HELD_OUT_SUBJECTS:
        references, captions = reference_set(subject, count=6, seed=3)
        assert all(f"sks {subject.shape}" in text for text in captions)
        scores = score_samples(critic, references, subject_prompts(subject), references, subject)
        assert scores["subject_accuracy"] == 1.0, subject
        assert scores["subject_similarity"] > 0.9
