"""Token bookkeeping for mixed-resolution latents: which cells are at full resolution, their position
ids, and the upsampling and renoising at a resolution change.

A token is a `patch`×`patch` square of latent pixels with `channels` channels, flattened in
(channel, row, column) order, as FLUX packs latents and `pixel_unshuffle` packs pixels. At half
resolution the latent is a grid of `height`×`width` cells, one token each. A cell brought to full
resolution becomes four child tokens (its latent pixels upsampled by nearest neighbour, split
into four patches). The sequence of a mixed layout is the low cells in raster order, then the
children of each high cell (raster order of cells, children row by row). Position ids follow
RALU: low cells at their integer cell coordinates, children at half steps (r + a/2, c + b/2);
the full layout is the ordinary full-resolution grid, coordinates doubled.

    >>> layout = MixedLayout.low(2, 2)
    >>> layout.tokens, layout.position_ids()[:, 1:].tolist()
    (4, [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    >>> mixed = layout.with_high(torch.tensor([[True, False], [False, False]]))
    >>> mixed.tokens, mixed.position_ids()[3:, 1:].tolist()
    (7, [[0.0, 0.0], [0.0, 0.5], [0.5, 0.0], [0.5, 0.5]])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CHILD_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class MixedLayout:
    """Which cells of a `height`×`width` half-resolution grid are at full resolution (`high`);
    `full` marks the final layout: every cell high, tokens in full-resolution raster order."""

    height: int
    width: int
    high: torch.Tensor  # (height, width) bool
    full: bool = False

    @classmethod
    def low(cls, height: int, width: int) -> MixedLayout:
        return cls(height, width, torch.zeros(height, width, dtype=torch.bool))

    def with_high(self, high: torch.Tensor) -> MixedLayout:
        return MixedLayout(self.height, self.width, high.to(torch.bool).cpu())

    def as_full(self) -> MixedLayout:
        return MixedLayout(self.height, self.width, torch.ones(self.height, self.width, dtype=torch.bool), full=True)

    @property
    def low_cells(self) -> torch.Tensor:
        return (~self.high).flatten().nonzero()[:, 0]

    @property
    def high_cells(self) -> torch.Tensor:
        return self.high.flatten().nonzero()[:, 0]

    @property
    def tokens(self) -> int:
        return 4 * self.height * self.width if self.full else len(self.low_cells) + 4 * len(self.high_cells)

    def position_ids(self) -> torch.Tensor:
        """(tokens, 3) FLUX-style ids (0, row, column)."""
        if self.full:
            return grid_ids(2 * self.height, 2 * self.width)
        low, high = self.low_cells, self.high_cells
        cells = torch.stack([low // self.width, low % self.width], dim=1).float()
        parents = torch.stack([high // self.width, high % self.width], dim=1).float()
        offsets = torch.tensor(CHILD_OFFSETS, dtype=torch.float32) / 2
        children = (parents[:, None, :] + offsets[None]).reshape(-1, 2)
        coordinates = torch.cat([cells, children])
        return torch.cat([torch.zeros(len(coordinates), 1), coordinates], dim=1)


def grid_ids(height: int, width: int) -> torch.Tensor:
    """(height·width, 3) ids (0, row, column) of a plain token grid in raster order."""
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([torch.zeros(height * width), rows.flatten().float(), columns.flatten().float()], dim=1)


def upsample_children(tokens: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """Tokens (B, n, D) -> their four children (B, n, 4, D): latent pixels repeated 2×2, split in four."""
    batch, count = tokens.shape[:2]
    pixels = tokens.reshape(batch, count, channels, patch, patch)
    pixels = pixels.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return torch.stack([pixels[..., a * patch : (a + 1) * patch, b * patch : (b + 1) * patch] for a, b in CHILD_OFFSETS], dim=2).flatten(3)


def duplicate_noise(batch: int, count: int, channels: int, patch: int, noise_scale: float,
                    generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Noise for the children of `count` upsampled tokens, (B, count, 4, D): white except that the four
    copies of each upsampled latent pixel have covariance I − 11ᵀ/Z², which cancels the noise they
    already share once the latent is rescaled (see `schedule.transition`)."""
    device = generator.device if generator is not None else like.device
    white = torch.randn(batch, count, channels, 2 * patch, 2 * patch, generator=generator, device=device, dtype=torch.float32)
    groups = white.unflatten(-2, (patch, 2)).unflatten(-1, (patch, 2))  # (..., patch, 2, patch, 2)
    shrink = 1 - (1 - 4 / noise_scale**2) ** 0.5  # n − k·mean has off-diagonal covariance −(2k − k²)/4 = −1/Z²
    groups = groups - shrink * groups.mean(dim=(-3, -1), keepdim=True)
    pixels = groups.reshape(white.shape)
    children = [pixels[..., a * patch : (a + 1) * patch, b * patch : (b + 1) * patch] for a, b in CHILD_OFFSETS]
    return torch.stack(children, dim=2).flatten(3).to(like.device, like.dtype)


def _white(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def refine(tokens: torch.Tensor, layout: MixedLayout, target: MixedLayout, scale: float, noise: float, noise_scale: float,
           channels: int, patch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The sequence of `target` from that of `layout` at a resolution change: cells that become high are
    upsampled, then everything is rescaled, x ← scale·x + noise·n′ (n′ white, correlated among copies)."""
    batch, _, dim = tokens.shape
    low_cells, high_cells = layout.low_cells, layout.high_cells
    low, high = tokens[:, : len(low_cells)], tokens[:, len(low_cells) :].reshape(batch, len(high_cells), 4, dim)
    cell_count = layout.height * layout.width
    cells = torch.zeros(batch, cell_count, 4, dim, dtype=tokens.dtype, device=tokens.device)
    stays_low = ~target.high.flatten()[low_cells]
    rising = low_cells[~stays_low]
    cells[:, high_cells] = scale * high + noise * _white(high.shape, generator, tokens)
    upsampled = upsample_children(low[:, ~stays_low], channels, patch)
    cells[:, rising] = scale * upsampled + noise * duplicate_noise(batch, len(rising), channels, patch, noise_scale, generator, tokens)
    kept_low = low[:, stays_low]
    kept_low = scale * kept_low + noise * _white(kept_low.shape, generator, tokens)
    if target.full:
        grid = cells.reshape(batch, layout.height, layout.width, 2, 2, dim).permute(0, 1, 3, 2, 4, 5)
        return grid.reshape(batch, 4 * cell_count, dim)
    return torch.cat([kept_low, cells[:, target.high_cells].flatten(1, 2)], dim=1)


def select_cells(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The ⌊fraction · cells⌋ cells (height, width) with the highest score summed over the batch:
    the transformer's position ids are shared by a batch, so its images share one region set."""
    total = scores.float().sum(dim=0).flatten()
    count = int(fraction * total.numel())
    high = torch.zeros_like(total, dtype=torch.bool)
    if count:
        high[torch.topk(total, count, sorted=False).indices] = True  # ties: topk's order, deterministic
    return high.reshape(scores.shape[-2:])


def pack_tokens(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """Latents (B, C, H, W) -> tokens (B, H/p · W/p, C·p²), (channel, row, column) inside a token."""
    batch, channels, height, width = latents.shape
    grid = latents.reshape(batch, channels, height // patch, patch, width // patch, patch)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * patch * patch)


def unpack_tokens(tokens: torch.Tensor, height: int, width: int, channels: int, patch: int) -> torch.Tensor:
    """Tokens of a `height`×`width` grid in raster order -> latents (B, C, height·p, width·p)."""
    batch = tokens.shape[0]
    pixels = tokens.reshape(batch, height, width, channels, patch, patch)
    return pixels.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height * patch, width * patch)


def half_size_tokens(tokens: torch.Tensor, height: int, width: int, channels: int, patch: int) -> torch.Tensor:
    """Tokens of a `height`×`width` grid -> those of the half-size grid, keeping every other latent
    pixel (how RALU's first stage starts from full-size noise)."""
    return pack_tokens(unpack_tokens(tokens, height, width, channels, patch)[..., ::2, ::2], patch)
