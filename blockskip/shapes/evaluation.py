"""Prompts for a personalized subject, and the critic's three scores on the samples.

Each subject gets a fixed prompt set: the subject alone on four backgrounds, and with a second,
small object. A prompt records what it asks for, so `prompt_adherence` can check it.

    >>> from blockskip.shapes.scenes import HELD_OUT_SUBJECTS
    >>> [p.text for p in subject_prompts(HELD_OUT_SUBJECTS[0])][:2]
    ['large sks circle on navy', 'large sks circle on beige']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .critic import AttributeCritic, critic_view, read_colours
from .scenes import BACKGROUNDS, COLOURS, PATTERNS, SHAPES, Subject

TOKEN = "sks"


@dataclass(frozen=True)
class SubjectPrompt:
    text: str
    shape: str  # the subject's class noun, stated in the prompt
    background: str
    extra: tuple[str, str] | None = None  # (colour, shape) of a second object the prompt asks for


def subject_prompts(subject: Subject) -> list[SubjectPrompt]:
    """Four backgrounds alone, then two prompts with a small second object."""
    prompts = [SubjectPrompt(f"large {TOKEN} {subject.shape} on {bg}", subject.shape, bg) for bg in ("navy", "beige", "olive", "gray")]
    # The second object's colour and shape differ from the subject's, so the critic's "present
    # anywhere" heads can only be satisfied by the second object.
    others = [c for c in ("green", "white", "yellow", "blue", "cyan") if c not in (subject.colour, subject.accent)]
    shapes = [s for s in ("square", "cross", "ring") if s != subject.shape]
    for colour, shape, bg in ((others[0], shapes[0], "maroon"), (others[1], shapes[1], "teal")):
        prompts.append(
            SubjectPrompt(f"large {TOKEN} {subject.shape} small {colour} solid {shape} on {bg}", subject.shape, bg, (colour, shape))
        )
    return prompts


@torch.no_grad()
def score_samples(
    critic: AttributeCritic, samples: torch.Tensor, prompts: list[SubjectPrompt], references: torch.Tensor, subject: Subject
) -> dict[str, float]:
    """Scores of `samples` (one per entry of `prompts`) against the subject's reference images.

    Both are read at the critic's side (`critic_view`), whatever side they were drawn at.

    - subject_similarity: mean cosine similarity of identity embeddings to the references';
    - image_similarity: the same with whole-image features;
    - prompt_adherence: fraction of the prompt's stated attributes read back (background, the
      subject's class, the second object's colour and shape somewhere in the image);
    - subject_accuracy: fraction of samples whose main object reads as the subject's shape,
      pattern and pair of colours (a set: the critic cannot order stripes' colours).
    """
    sample_features, reference_features = critic(critic_view(samples)), critic(critic_view(references))

    def similarity(key: str) -> float:
        a, b = F.normalize(sample_features[key], dim=1), F.normalize(reference_features[key], dim=1)
        return float((a @ b.T).mean())

    checks = []
    for row, prompt in enumerate(prompts):
        row_checks = [
            int(sample_features["background"][row].argmax()) == list(BACKGROUNDS).index(prompt.background),
            int(sample_features["shape"][row].argmax()) == SHAPES.index(prompt.shape),
        ]
        if prompt.extra is not None:
            colour, shape = prompt.extra
            row_checks.append(bool(sample_features["colours_present"][row, list(COLOURS).index(colour)] > 0))
            row_checks.append(bool(sample_features["shapes_present"][row, SHAPES.index(shape)] > 0))
        checks.append(sum(row_checks) / len(row_checks))
    shapes, patterns = sample_features["shape"].argmax(1), sample_features["pattern"].argmax(1)
    correct = (shapes == SHAPES.index(subject.shape)) & (patterns == PATTERNS.index(subject.pattern))
    colours = read_colours(sample_features["colours"], patterns)
    correct &= torch.tensor([read == {subject.colour, subject.accent} for read in colours])
    return {
        "subject_similarity": similarity("identity"),
        "image_similarity": similarity("image"),
        "prompt_adherence": sum(checks) / len(checks),
        "subject_accuracy": float(correct.float().mean()),
    }
