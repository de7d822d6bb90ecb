"""Where an image has edges, per token: RALU upsamples the tokens whose patch holds most edge pixels.

`canny` follows OpenCV's `cv2.Canny(grey, low, high)` defaults (3×3 Sobel, |gx| + |gy|, no blur,
non-maximum suppression over four directions, hysteresis over 8-neighbours), written in torch so
it runs on the sampling device and needs no OpenCV. `gradient` is the cheap alternative: the Sobel
magnitude itself, for latents that are not decoded.

    >>> image = torch.zeros(1, 3, 16, 16); image[:, :, 4:12, 4:12] = 1.0
    >>> edges = canny(grey(image))
    >>> edges.shape, bool(edges[0, 4, 8]), bool(edges[0, 8, 8])
    (torch.Size([1, 16, 16]), True, False)
    >>> token_scores(edges.float(), cell=4).shape
    torch.Size([1, 4, 4])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def grey(images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [−1, 1] -> grey levels (B, H, W) in [0, 255] (ITU-R 601 weights)."""
    weights = torch.tensor([0.299, 0.587, 0.114], device=images.device, dtype=torch.float32)
    levels = (images.float().clamp(-1, 1) + 1) / 2
    return (levels * weights[:, None, None]).sum(dim=1) * 255


def sobel(planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) -> horizontal and vertical derivatives, borders replicated."""
    kernels = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None].to(planes.device, torch.float32)
    padded = F.pad(planes.float()[:, None], (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels)
    return gradients[:, 0], gradients[:, 1]


def _neighbours(planes: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    padded = F.pad(planes, (1, 1, 1, 1))
    height, width = planes.shape[-2:]
    return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


def canny(planes: torch.Tensor, low: float = 100.0, high: float = 200.0) -> torch.Tensor:
    """Edge pixels (B, H, W) bool of grey images (B, H, W) on a 0–255 scale."""
    gx, gy = sobel(planes)
    magnitude = gx.abs() + gy.abs()
    angle = torch.rad2deg(torch.atan2(gy, gx)).remainder(180)
    sector = ((angle + 22.5) // 45).long().remainder(4)  # 0: horizontal gradient, 1: 45°, 2: vertical, 3: 135°
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for index, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead, behind = _neighbours(magnitude, dy, dx), _neighbours(magnitude, -dy, -dx)
        keep |= (sector == index) & (magnitude > ahead) & (magnitude >= behind)
    candidate = keep & (magnitude > low)
    edges = candidate & (magnitude > high)
    while True:  # hysteresis: grow the strong edges along connected candidates
        grown = candidate & (F.max_pool2d(edges.float()[:, None], 3, 1, 1)[:, 0] > 0)
        if torch.equal(grown, edges):
            return edges
        edges = grown


def gradient_magnitude(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the channel-mean Sobel magnitude, |gx| + |gy|."""
    batch, channels = latents.shape[:2]
    gx, gy = sobel(latents.reshape(batch * channels, *latents.shape[-2:]))
    return (gx.abs() + gy.abs()).reshape(batch, channels, *latents.shape[-2:]).mean(dim=1)


def token_scores(edges: torch.Tensor, cell: int) -> torch.Tensor:
    """Edge strength (B, H, W) summed over each `cell`×`cell` patch -> (B, H/cell, W/cell)."""
    return F.avg_pool2d(edges.float()[:, None], cell)[:, 0] * cell * cell


def cell_scores(latents: torch.Tensor, cells_wide: int, patch: int, detector: str = "canny",
                thresholds: tuple[float, float] = (100.0, 200.0), decode=None) -> torch.Tensor:
    """Edge strength per token cell of half-size latents (B, C, H, W): the latent's Sobel magnitude
    ("gradient"), or Canny on `decode(latents)` ("canny"; without `decode` the latents are the image)."""
    if detector == "gradient":
        return token_scores(gradient_magnitude(latents), patch)
    images = decode(latents) if decode is not None else latents
    return token_scores(canny(grey(images.float()), *thresholds).float(), images.shape[-1] // cells_wide)
