"""Hard 0/1 gates with soft gradients: DyDiT's Gumbel-sigmoid with a straight-through estimator.

Training adds logistic noise (the difference of two Gumbel draws) to the logits; the forward
pass sees 1[sigmoid((logit + noise)/τ) > threshold], the backward pass the sigmoid's gradient.
In evaluation there is no noise, so a gate is open exactly when its logit is above
logit(threshold) (0 for the default threshold 0.5).

    >>> import torch
    >>> gate(torch.tensor([-2.0, 3.0]), training=False).tolist()
    [0.0, 1.0]
"""

from __future__ import annotations

import torch


def gate(logits: torch.Tensor, tau: float = 5.0, threshold: float = 0.5, training: bool = True,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """0/1 values with the gradient of sigmoid(logits / τ) (straight-through)."""
    if training:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32).clamp(1e-6, 1 - 1e-6)
        logits = logits + (torch.log(uniform) - torch.log1p(-uniform)).to(logits.dtype)  # logistic = Gumbel − Gumbel
    soft = torch.sigmoid(logits / tau)
    hard = (soft > threshold).to(soft.dtype)
    return hard - soft.detach() + soft
