"""One RALU sampling run over token sequences: Euler steps stage by stage and the resolution changes.

Model-agnostic: it sees tokens (B, n, channels·patch²) and velocities of the same shape, and asks
a `score_cells` callable where the edges are. Pipelines (`blockskip.sampling.pipelines`) and the
shapes sampler drive it; `sigmas` are the noise levels the model is called at, `position_ids` the
ids of the current sequence.

    >>> from blockskip.sampling import RALUSettings
    >>> run = RALURun(RALUSettings.preset("7x"), height=8, width=8, channels=3, patch=2,
    ...               score_cells=lambda clean, layout: torch.rand(clean.shape[0], layout.height, layout.width))
    >>> tokens = torch.randn(1, run.tokens, 12)
    >>> sizes = []
    >>> for sigma in run.sigmas:
    ...     tokens = run.step(torch.randn_like(tokens), tokens)
    ...     sizes.append(tokens.shape[1])
    >>> len(run.sigmas), sizes
    (10, [16, 19, 19, 19, 64, 64, 64, 64, 64, 64])
"""

from __future__ import annotations

from typing import Callable

import torch

from .mixed_tokens import MixedLayout, grid_ids, refine, select_cells
from .schedule import stage_sigmas, transitions
from .settings import RALUSettings, RALUSettingsError

ScoreCells = Callable[[torch.Tensor, MixedLayout], torch.Tensor]  # clean tokens, layout -> (B, height, width)


class RALURun:
    """The state of one sampling call. `height`×`width` is the full-resolution token grid."""

    def __init__(self, settings: RALUSettings, height: int, width: int, channels: int, patch: int,
                 score_cells: ScoreCells | None = None, generator: torch.Generator | None = None):
        if settings.stages > 1 and (height % 2 or width % 2):
            raise RALUSettingsError(f"RALU halves the token grid, so it must be even; got {height}×{width} tokens")
        if settings.stages == 3 and settings.region_fraction and score_cells is None:
            raise RALUSettingsError("a mixed stage needs score_cells to choose its regions")
        self.settings, self.channels, self.patch = settings, channels, patch
        self.score_cells, self.generator = score_cells, generator
        self.grids, self.transitions = stage_sigmas(settings), transitions(settings)
        self.layout = MixedLayout.low(height // 2, width // 2) if settings.stages > 1 else None  # None: one plain stage
        self.full_height, self.full_width = height, width
        self.stage, self.index = 0, 0
        self._ids: tuple[MixedLayout | None, torch.Tensor] | None = None  # (layout, its ids)

    @property
    def sigmas(self) -> torch.Tensor:
        """The noise level of every model call, all stages in order."""
        return torch.cat([grid[:-1] for grid in self.grids])

    @property
    def position_ids(self) -> torch.Tensor:
        """Ids of the current sequence; worked out once per layout (every model call asks for them)."""
        if self._ids is None or self._ids[0] is not self.layout:
            ids = grid_ids(self.full_height, self.full_width) if self.layout is None else self.layout.position_ids()
            self._ids = (self.layout, ids)
        return self._ids[1]

    @property
    def tokens(self) -> int:
        """Length of the current sequence."""
        return self.full_height * self.full_width if self.layout is None else self.layout.tokens

    @property
    def finished(self) -> bool:
        """Every model call of the last stage has been stepped."""
        return self.stage == self.settings.stages - 1 and self.index == len(self.grids[self.stage]) - 1

    @property
    def sigma(self) -> float:
        return float(self.grids[self.stage][self.index])

    def step(self, velocity: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One Euler step (in float32, returned in the velocity's dtype), then the resolution change
        when it ends a stage."""
        grid = self.grids[self.stage]
        sigma, next_sigma = grid[self.index], grid[self.index + 1]
        stepped = (tokens.float() + (next_sigma - sigma) * velocity.float()).to(velocity.dtype)
        self.index += 1
        if self.index == len(grid) - 1 and self.stage < self.settings.stages - 1:
            stepped = self._change_resolution(stepped, velocity, float(next_sigma))
        return stepped

    def _change_resolution(self, tokens: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
        change = self.transitions[self.stage]
        last = self.stage + 1 == self.settings.stages - 1
        if last:
            target = self.layout.as_full()
        elif self.settings.region_fraction:
            clean = tokens.float() - sigma * velocity.float()  # Tweedie's estimate in flow matching
            target = self.layout.with_high(select_cells(self.score_cells(clean, self.layout), self.settings.region_fraction))
        else:
            target = self.layout
        tokens = refine(tokens, self.layout, target, change.scale, change.noise, change.noise_scale,
                        self.channels, self.patch, self.generator)
        self.layout, self.stage, self.index = target, self.stage + 1, 0
        return tokens
