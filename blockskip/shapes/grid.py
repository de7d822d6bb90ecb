"""Save image batches as PNG grids (rows of images, optional row labels are left to the caller).

    >>> import torch, tempfile, os
    >>> scratch = tempfile.TemporaryDirectory()
    >>> path = os.path.join(scratch.name, "grid.png")
    >>> save_grid([torch.zeros(3, 3, 32, 32), torch.ones(2, 3, 32, 32)], path, scale=2).size
    (204, 136)
    >>> scratch.cleanup()
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def save_grid(rows: list[torch.Tensor], path: str | Path, scale: int = 3, gap: int = 2) -> Image.Image:
    """`rows` of images (N, 3, H, W) in [-1, 1] -> one PNG, upscaled `scale`× with nearest neighbours."""
    height, width = rows[0].shape[-2:]
    columns = max(len(row) for row in rows)
    canvas = torch.full((3, len(rows) * (height + gap), columns * (width + gap)), 255, dtype=torch.uint8)
    for r, row in enumerate(rows):
        pixels = ((row.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        for c, image in enumerate(pixels):
            top, left = r * (height + gap), c * (width + gap)
            canvas[:, top : top + height, left : left + width] = image
    image = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return image
