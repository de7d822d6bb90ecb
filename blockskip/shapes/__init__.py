"""A small world we can measure quality in: procedural scenes, a frozen text encoder, a pretrained shapes DiT.

Used by `blockskip demo` (`demo`, with its images and captions from `demo_data`) and by the quality
benchmark (benchmarks/quality/). See docs/quality.md. Sits above `estimate` and `selection`.
"""

from .generate import generate
from .model import (
    SHAPES_DIT_CONFIG,
    build_shapes_dit,
    image_ids,
    load_shapes_dit,
    model_card,
    pack,
    pretrained_sides,
    unpack,
)
from .scenes import (
    HELD_OUT_SUBJECTS,
    Scene,
    Subject,
    caption,
    render,
    sample_scene,
    subject_scene,
)
from .text import ShapesTextEncoder

__all__ = [
    "HELD_OUT_SUBJECTS",
    "SHAPES_DIT_CONFIG",
    "Scene",
    "ShapesTextEncoder",
    "Subject",
    "build_shapes_dit",
    "caption",
    "generate",
    "image_ids",
    "load_shapes_dit",
    "model_card",
    "pack",
    "pretrained_sides",
    "render",
    "sample_scene",
    "subject_scene",
    "unpack",
]
