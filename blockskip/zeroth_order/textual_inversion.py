"""Zeroth-order textual inversion (ZOODiP): learn a new token's embedding with forward passes only.

The trained tensor is one vector: a row of a text encoder's embedding table (`embedding_row`, for
CLIP's or T5's `get_input_embeddings()`), or the shapes encoder's vector of a new word
(`ShapesTextEncoder.token_vector`). Each step draws a timestep from partial uniform sampling
(PUTS, t ∈ [0.5, 0.9): below it the concept is not learned, per the paper), estimates the gradient
with ZOODiP's forward-difference estimator (two queries, ε = 1e-3), projects it off the
low-variance directions of the last 128 iterates (`SubspaceGradient`) and takes an Adam step
(lr 5e-3). The text encoder and the denoiser run without gradients: memory is inference memory.

Departures from the paper: the denoiser is any diffusers transformer (the paper uses SD1.5's
U-Net, quantized to INT8); the timestep is a flow-matching noise level rather than a DDPM index.

Example:
    >>> import torch
    >>> table = torch.nn.Embedding(10, 4)
    >>> vector = embedding_row(table, 3)
    >>> inversion = ZerothOrderTextualInversion(vector, seed=0)
    >>> target = torch.ones(4)
    >>> result = inversion.step(lambda: ((table.weight[3] - target) ** 2).sum())
    >>> inversion.optimizer.steps
    1
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..crops.timesteps import TimestepSampler, partial_uniform
from .optimizer import ZerothOrderOptimizer, ZerothOrderResult
from .subspace import SubspaceGradient


def embedding_row(table: nn.Embedding | torch.Tensor, index: int) -> torch.Tensor:
    """A view of row `index` of an embedding table: in-place updates of it change the table."""
    weight = table.weight if isinstance(table, nn.Embedding) else table
    return weight.detach()[index]


class ZerothOrderTextualInversion:
    """Forward-only training of one embedding vector (see the module doc for the recipe).

    `step(loss)` takes a closure that runs the model on a fixed batch, noise and timestep and
    returns the loss; draw those with `timesteps` (PUTS) outside the closure.
    """

    def __init__(
        self,
        vector: torch.Tensor,
        lr: float = 5e-3,
        epsilon: float = 1e-3,
        queries: int = 2,
        tau: int = 128,
        nu: float = 1e-3,
        timesteps: TimestepSampler | None = None,
        seed: int = 0,
    ):
        self.vector = vector
        self.subspace = SubspaceGradient(tau=tau, nu=nu)
        self.optimizer = ZerothOrderOptimizer(
            [vector], lr=lr, epsilon=epsilon, queries=queries, estimator="forward", update="adam",
            seed=seed, gradient_transform=self.subspace,
        )
        self.timesteps = timesteps or partial_uniform()

    def step(self, loss: Callable[[], "torch.Tensor | float"]) -> ZerothOrderResult:
        result = self.optimizer.step(loss)
        self.subspace.observe([self.vector])
        return result
