"""Subspace Gradient (ZOODiP, Kim et al., CVPR 2025): denoise a zeroth-order gradient by dropping the
directions in which the trained vector has barely moved.

A zeroth-order estimate spreads noise over every dimension, while the iterates of textual
inversion move in a small subspace. Every `tau` steps the last `tau` iterates (a ring buffer of
the trained vector after each update) are standardised per feature and decomposed by SVD; the
trailing principal directions that together hold less than `nu` of the variance are the noise
directions P, and until the next refresh every gradient is projected off them:
ĝ′ = ĝ (I − PᵀP). Before the first refresh nothing is removed. Paper values: τ = 128, ν = 1e-3.

As in the paper's code, at most `tau − 1` directions can be removed: the SVD of `tau` vectors has
at most `tau` components, and directions outside the buffer's span are kept.

Example:
    >>> import torch
    >>> subspace = SubspaceGradient(tau=4, nu=1e-3)
    >>> for step in range(4):
    ...     subspace.observe([torch.tensor([float(step), 2.0 * step, 0.0])])
    >>> subspace.removed  # the iterates moved along (1, 2, 0) only
    2
    >>> [round(float(value), 3) for value in subspace([torch.tensor([1.0, 1.0, 1.0])])[0]]
    [1.0, 1.0, 0.0]
"""

from __future__ import annotations

import torch


class SubspaceGradient:
    """Project zeroth-order gradients off the low-variance directions of recent iterates (see module doc).

    Call `observe(tensors)` after every update with the trained tensors, and use the object as the
    optimizer's `gradient_transform`.
    """

    def __init__(self, tau: int = 128, nu: float = 1e-3):
        if tau < 2 or not 0 < nu < 1:
            raise ValueError(f"need tau >= 2 and 0 < nu < 1 (got {tau}, {nu})")
        self.tau, self.nu = tau, nu
        self.buffer: list[torch.Tensor] = []
        self.observed = 0
        self.noise_directions: torch.Tensor | None = None  # (k, d), orthonormal rows

    @property
    def removed(self) -> int:
        """How many directions the current projection removes."""
        return 0 if self.noise_directions is None else self.noise_directions.shape[0]

    def observe(self, tensors: list[torch.Tensor]) -> None:
        """Record the trained tensors after an update; refresh the projection every `tau` records."""
        flat = torch.cat([tensor.detach().reshape(-1).double().cpu() for tensor in tensors])
        if len(self.buffer) == self.tau:
            self.buffer[self.observed % self.tau] = flat  # ring buffer, as the reference code keeps it
        else:
            self.buffer.append(flat)
        self.observed += 1
        if self.observed % self.tau == 0:
            self.refresh()

    def refresh(self) -> None:
        """Recompute the noise directions from the buffer (PCA of the standardised iterates)."""
        history = torch.stack(self.buffer)
        spread = history.std(dim=0, unbiased=False)
        standardised = (history - history.mean(dim=0)) / torch.where(spread > 0, spread, torch.ones_like(spread))
        _, singular, right = torch.linalg.svd(standardised, full_matrices=False)
        variance = singular**2
        if not variance.sum() > 0:
            self.noise_directions = None
            return
        kept_share = variance.cumsum(0) / variance.sum()
        keep = int((kept_share > 1 - self.nu).nonzero()[0]) + 1  # the first i whose share passes 1 − ν
        self.noise_directions = right[keep:] if keep < right.shape[0] else None

    def __call__(self, gradients: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.noise_directions is None:
            return gradients
        flat = torch.cat([g.reshape(-1).double().cpu() for g in gradients])
        if flat.numel() != self.noise_directions.shape[1]:
            raise ValueError(f"gradient has {flat.numel()} values, the observed tensors {self.noise_directions.shape[1]}")
        flat = flat - (flat @ self.noise_directions.T) @ self.noise_directions
        out, start = [], 0
        for g in gradients:
            out.append(flat[start : start + g.numel()].reshape(g.shape).to(g.device, g.dtype))
            start += g.numel()
        return out
