"""Text embeddings computed once per unique prompt.

A LoRA run sees the same few captions thousands of times, and the text encoders are frozen, so
each caption is encoded once and reused. Encoding one prompt at a time also makes a caption's
embedding independent of which other captions share its batch, which a residual bank relies on:
the precompute and the training loop must feed the transformer identical text.

Example:
    >>> import torch
    >>> calls = []
    >>> def encode(prompt):
    ...     calls.append(prompt)
    ...     return {"text": torch.full((1, 3), float(len(prompt)))}
    >>> cache = PromptCache(encode)
    >>> cache(["a dog", "a cat", "a dog"])["text"].shape, calls
    (torch.Size([3, 3]), ['a dog', 'a cat'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch


class PromptCache:
    """Maps prompts to their embeddings, calling `encode` once per unique prompt.

    `encode(prompt) -> {name: tensor}` returns tensors whose first dimension is 1 (one prompt).
    `cache(prompts)` concatenates them in batch order; `cache.add(prompts)` just fills the cache
    (call it up front, then the text encoders can leave the GPU).
    """

    def __init__(self, encode: Callable[[str], dict[str, torch.Tensor]]):
        self.encode = encode
        self._entries: dict[str, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self._entries

    def add(self, prompts: Iterable[str]) -> None:
        """Encode every prompt not cached yet."""
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be strings, got {type(prompt).__name__}: {prompt!r}")
            if prompt not in self._entries:
                with torch.no_grad():
                    encoded = self.encode(prompt)
                self._entries[prompt] = {name: tensor.detach() for name, tensor in encoded.items()}

    def __call__(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The embeddings of `prompts`, concatenated along the batch dimension."""
        if isinstance(prompts, str):
            prompts = [prompts]
        self.add(prompts)
        names = self._entries[prompts[0]]
        return {name: torch.cat([self._entries[prompt][name] for prompt in prompts]) for name in names}
