"""A frozen text encoder of our own: one fixed random vector per word plus one per position.

Every word, known or not, gets a vector seeded by its spelling, so a rare token such as `sks`
has an embedding the pretrained model has never seen, as a new word has for a real text encoder.
Position vectors let the model tell "red circle on blue" from "blue circle on red". Sequences are
padded with zeros to `max_tokens`; the pooled vector is the mean of the real tokens.

    >>> encoder = ShapesTextEncoder()
    >>> tokens, pooled = encoder(["large red solid circle on navy", ""])
    >>> tokens.shape, pooled.shape, float(tokens[1].abs().sum())
    (torch.Size([2, 20, 64]), torch.Size([2, 64]), 0.0)
"""

from __future__ import annotations

import torch
from torch import nn

from .scenes import stable_hash


class ShapesTextEncoder(nn.Module):
    def __init__(self, dim: int = 64, max_tokens: int = 20, seed: int = 7):
        super().__init__()
        self.dim, self.max_tokens, self.seed = dim, max_tokens, seed
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("positions", torch.randn(max_tokens, dim, generator=generator) * 0.5, persistent=False)
        self._words: dict[str, torch.Tensor] = {}

    def word_vector(self, word: str) -> torch.Tensor:
        if word not in self._words:
            generator = torch.Generator().manual_seed(self.seed * 7919 + stable_hash(word))
            self._words[word] = torch.randn(self.dim, generator=generator)
        return self._words[word]

    def token_vector(self, token: str, like: str | None = None) -> torch.Tensor:
        """The live vector of `token` (started from `like`'s vector if given): updating it in place
        changes every later encoding, which is how textual inversion trains a new word."""
        if like is not None:
            self._words[token] = self.word_vector(like).clone()
        return self.word_vector(token)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (tokens (B, max_tokens, dim), pooled (B, dim))."""
        tokens = torch.zeros(len(prompts), self.max_tokens, self.dim)
        pooled = torch.zeros(len(prompts), self.dim)
        for row, prompt in enumerate(prompts):
            words = prompt.split()
            if len(words) > self.max_tokens:
                raise ValueError(f"prompt has {len(words)} words, more than max_tokens={self.max_tokens}: {prompt!r}")
            for column, word in enumerate(words):
                tokens[row, column] = self.word_vector(word) + self.positions[column]
            if words:
                pooled[row] = tokens[row, : len(words)].mean(dim=0)
        return tokens.to(self.positions.device), pooled.to(self.positions.device)
