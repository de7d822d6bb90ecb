"""The sigma grid of each RALU stage and the noise rescheduling at each resolution change.

At the end of stage k (progress e, sigma 1 − e) the latent is upsampled, which leaves the
noise of each upsampled value shared by its copies. RALU rescales the latent by β and adds
correlated noise of scale α so the result is an exact flow-matching state at sigma α with white
noise: with D = Z(1 − e) + e, β = 1/D, and the next stage starts at progress s = e/D, sigma
α = 1 − s. Because the timestep goes back, each later stage re-traverses a stretch of sigmas.

    >>> from blockskip.sampling import RALUSettings
    >>> grids = stage_sigmas(RALUSettings.preset("4x"))
    >>> [round(float(grid[0]), 3) for grid in grids], [round(float(grid[-1]), 3) for grid in grids]
    ([1.0, 0.936, 0.885], [0.7, 0.55, 0.0])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .settings import RALUSettings


@dataclass(frozen=True)
class Transition:
    """The rescaling at a resolution change: x ← β·x_upsampled + α·n′, the next stage starting at sigma α."""

    scale: float  # β
    noise: float  # α, also the next stage's first sigma
    noise_scale: float  # Z: the copies of one upsampled value get noise covariance I − 11ᵀ/Z²


def transition(stage_end: float, noise_scale: float) -> Transition:
    """The rescaling after a stage that ends at progress `stage_end` (1 − its last sigma)."""
    denominator = noise_scale * (1 - stage_end) + stage_end
    return Transition(scale=1 / denominator, noise=1 - stage_end / denominator, noise_scale=noise_scale)


def shifted_grid(first_sigma: float, last_sigma: float, steps: int, shift: float) -> torch.Tensor:
    """`steps + 1` sigmas from `first_sigma` to `last_sigma`, evenly spaced before the shift
    σ = h·u / (1 + (h − 1)·u) (the grid a shifted flow-matching scheduler uses)."""
    def unshift(sigma: float) -> float:
        return sigma / (shift - (shift - 1) * sigma)

    u = torch.linspace(unshift(first_sigma), unshift(last_sigma), steps + 1, dtype=torch.float64)
    return (shift * u / (1 + (shift - 1) * u)).float()


def stage_sigmas(settings: RALUSettings) -> list[torch.Tensor]:
    """One grid per stage, its first and last sigma included (a stage of N calls has N + 1 entries)."""
    grids, first = [], 1.0
    for steps, end, shift in zip(settings.steps, settings.stage_ends, settings.shifts):
        grids.append(shifted_grid(first, 1 - end, steps, shift))
        first = transition(end, settings.noise_scale).noise
    return grids


def transitions(settings: RALUSettings) -> list[Transition]:
    """The rescaling after each stage but the last."""
    return [transition(end, settings.noise_scale) for end in settings.stage_ends[:-1]]
