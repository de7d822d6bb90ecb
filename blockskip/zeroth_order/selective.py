"""Selective optimization: per step, backpropagation on a low-resolution batch (BP-low) or a
zeroth-order step on a full-resolution batch (ZO-high), chosen by the step's timestep and progress.

Choi, Park et al. (arXiv 2507.10029) observe that BP-low adapts a model to a subject quickly but
distorts structure, which forms at high timesteps (noisy inputs), while ZO-high keeps structure at
inference memory but converges slowly without prior adaptation. Their timestep-aware probability
keeps BP-low away from high timesteps and uses ZO-high more as training progresses. The formula
itself is not in the text we could read, so `bp_probability` is ours, with exactly those two
properties, and any function of (timestep, progress) can replace it:

    P(BP-low | t, s) = σ((t₀(s) − t) / width),  t₀(s) = start − (start − end) · s

with t ∈ [0, 1] the noise level (1 = pure noise), s ∈ [0, 1] the share of training done, and
defaults start = 1.0, end = 0.4, width = 0.1: early on BP-low is chosen at all but the noisiest
timesteps, by the end only below t ≈ 0.4.

Example:
    >>> choose = SelectiveOptimization(seed=0)
    >>> round(choose.bp_probability(0.2, 0.0), 3), round(choose.bp_probability(0.9, 1.0), 3)
    (1.0, 0.007)
    >>> choose.choose(0.1, 0.0)
    'bp'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

ProbabilityFunction = Callable[[float, float], float]


@dataclass(frozen=True)
class TimestepAwareProbability:
    """P(BP-low | t, s) = σ((t₀(s) − t) / width), t₀ sliding from `start` to `end` over training."""

    start: float = 1.0
    end: float = 0.4
    width: float = 0.1

    def __call__(self, timestep: float, progress: float) -> float:
        threshold = self.start - (self.start - self.end) * min(max(progress, 0.0), 1.0)
        return 1 / (1 + math.exp(-(threshold - timestep) / self.width))


class SelectiveOptimization:
    """Draws "bp" or "zo" per step with `probability(timestep, progress)` = P(BP-low); seeded.

    Use it in any loop: draw the step's timestep first, then `kind = selector.choose(t, s)`, then
    take the low-resolution batch and a backward pass for "bp", or the full-resolution batch and
    a `ZerothOrderOptimizer.step` for "zo". `counts` says how often each was chosen.
    """

    def __init__(self, probability: ProbabilityFunction | None = None, seed: int = 0):
        self.bp_probability: ProbabilityFunction = probability or TimestepAwareProbability()
        self.generator = torch.Generator().manual_seed(seed)
        self.counts = {"bp": 0, "zo": 0}

    def choose(self, timestep: float, progress: float) -> str:
        chance = float(self.bp_probability(float(timestep), float(progress)))
        if not 0 <= chance <= 1:
            raise ValueError(f"the probability function gave {chance} for t={timestep}, progress={progress}")
        kind = "bp" if float(torch.rand((), generator=self.generator)) < chance else "zo"
        self.counts[kind] += 1
        return kind

    def step(
        self,
        timestep: float,
        progress: float,
        bp_step: Callable[[], float],
        zo_step: Callable[[], float],
    ) -> tuple[str, float]:
        """Choose, run the chosen step function (each returns its loss) and return (kind, loss)."""
        kind = self.choose(timestep, progress)
        return kind, (bp_step if kind == "bp" else zo_step)()
