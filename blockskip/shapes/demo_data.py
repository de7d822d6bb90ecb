"""The demo's embedded default: a small FLUX-architecture transformer and generated subject images.

Nothing here is downloaded. The model is `diffusers.FluxTransformer2DModel` built from a small
config with seeded random weights; the "subject" is a two-tone striped ring drawn at random
positions and sizes on plain backgrounds; captions are embedded by a frozen table of seeded word
vectors with fixed position vectors, standing in for a text encoder.

Example:
    >>> images = subject_images(4, size=32, seed=0)
    >>> images.shape, float(images.min()) >= -1, float(images.max()) <= 1
    (torch.Size([4, 3, 32, 32]), True, True)
"""

from __future__ import annotations

import torch
from torch import nn

# The shapes DiT's packing: 32x32 RGB images -> 8x8 tokens of 48 channels.
from .model import PIXELS_PER_TOKEN, pack

DEMO_MODEL_CONFIG = {
    "patch_size": 1,
    "in_channels": 3 * PIXELS_PER_TOKEN**2,
    "num_layers": 4,
    "num_single_layers": 8,
    "attention_head_dim": 32,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,
    "pooled_projection_dim": 64,
    "guidance_embeds": False,
    "axes_dims_rope": (8, 12, 12),
}

SUBJECT_PROMPT = "a photo of sks ring"


def build_demo_model(seed: int = 0, **overrides) -> nn.Module:
    """The demo's FLUX-architecture transformer (12 blocks, width 128, ~4.5M parameters)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel.from_config({**DEMO_MODEL_CONFIG, **overrides})


def subject_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """`count` images of the demo subject, (count, 3, size, size) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coords = torch.linspace(-1, 1, size)
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    images = []
    for _ in range(count):
        center = (torch.rand(2, generator=generator) - 0.5) * 0.6
        radius = 0.35 + 0.25 * torch.rand(1, generator=generator)
        background = torch.rand(3, 1, 1, generator=generator) * 0.8 - 0.4
        distance = ((x - center[0]) ** 2 + (y - center[1]) ** 2).sqrt()
        ring = (distance < radius) & (distance > radius * 0.55)
        stripes = torch.sin((x + y) * 12.0) > 0
        orange, teal = torch.tensor([0.9, 0.4, -0.8]), torch.tensor([-0.8, 0.6, 0.5])
        subject = torch.where(stripes, orange[:, None, None], teal[:, None, None])
        images.append(torch.where(ring, subject, background.expand(3, size, size)))
    return torch.stack(images).clamp(-1, 1)


def pack_images(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, 3, H, W) -> tokens (B, H/4 · W/4, 48) and FLUX image ids (tokens, 3)."""
    return pack(images)


class CaptionEmbedder(nn.Module):
    """A frozen stand-in for a text encoder: seeded word vectors plus fixed position vectors."""

    def __init__(self, dim: int = 64, max_tokens: int = 16, seed: int = 1):
        super().__init__()
        self.dim = dim
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("positions", torch.randn(max_tokens, dim, generator=generator) * 0.5)
        self.seed = seed

    def word_vector(self, word: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + sum(ord(c) * 131**i for i, c in enumerate(word)))
        return torch.randn(self.dim, generator=generator)

    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (token embeddings (B, T, dim), pooled embeddings (B, dim)); T is the longest prompt."""
        words = [prompt.lower().split() for prompt in prompts]
        length = max(len(w) for w in words)
        embeddings = torch.zeros(len(prompts), length, self.dim)
        for row, prompt_words in enumerate(words):
            for column, word in enumerate(prompt_words):
                embeddings[row, column] = self.word_vector(word) + self.positions[column]
        return embeddings, embeddings.mean(dim=1)
