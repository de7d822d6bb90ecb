"""Image loading and conversion: files, PIL images, arrays and tensors as float RGB ``(3, H, W)``.

Whatever a dataset yields (a file path, a PIL image in any mode, a numpy array, a tensor
``(C, H, W)`` or ``(H, W)``) becomes RGB: grayscale is replicated, 16-bit grayscale is scaled from
0..65535, PIL transparency is composited onto white, tensor alpha is dropped, and PIL images, files
and uint8 values are mapped to ``value_range``. Files that cannot be read raise
:class:`ImageLoadError` naming the file.

Example:
    >>> import numpy as np
    >>> from blockskip.crops.images import image_to_tensor
    >>> x = image_to_tensor(np.zeros((2, 4), dtype=np.uint8))  # uint8 grayscale, 0 -> -1
    >>> x.shape, x.unique().tolist()
    (torch.Size([3, 2, 4]), [-1.0])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "ImageLoadError",
    "load_image",
    "image_to_tensor",
]


class ImageLoadError(OSError):
    """An example could not be read as an image; the message names the file or the example."""


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file, applying its EXIF orientation.

    Raises :class:`ImageLoadError` naming ``path`` for missing, truncated or non-image files.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise ImageLoadError(f"cannot read image file {os.fspath(path)!r}: {exc}") from exc


def _pil_to_uint8(im: Image.Image) -> torch.Tensor:
    """RGB uint8 CHW; transparency is composited onto white, every other mode converted."""
    if im.mode.startswith("I"):  # 16-bit grayscale (PNG "I;16" / "I"): PIL's own convert would saturate
        gray = np.clip(np.array(im, dtype=np.float64) * (255.0 / 65535.0) + 0.5, 0, 255).astype(np.uint8)
        return torch.from_numpy(gray)[None].expand(3, -1, -1).contiguous()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)


def _to_rgb_channels(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected an image tensor (C, H, W) or (H, W), got shape {tuple(x.shape)}")
    c = x.shape[0]
    if c not in (1, 2, 3, 4):
        hint = " (it looks like H, W, C: use .permute(2, 0, 1))" if x.shape[-1] in (1, 3, 4) else ""
        raise ValueError(f"{name}: expected 1-4 channels first, got shape {tuple(x.shape)}{hint}")
    if c in (1, 2):  # grayscale (+ alpha, dropped)
        return x[:1].expand(3, -1, -1)
    return x[:3]  # RGB, or RGBA with alpha dropped (composite tensors yourself if it matters)


def _uint8_to_range(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Map values on the 0..255 scale (uint8 or float) onto ``value_range``."""
    lo, hi = value_range
    return x.float() * ((hi - lo) / 255.0) + lo


def _to_float(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    return _uint8_to_range(x, value_range) if x.dtype == torch.uint8 else x.float()


def _raw_source(source: Any, name: str) -> torch.Tensor:
    """A tensor (uint8 or float) for a path, PIL image, numpy array or tensor."""
    if isinstance(source, (str, os.PathLike)):
        return _pil_to_uint8(load_image(source))
    if isinstance(source, Image.Image):
        try:
            return _pil_to_uint8(source)
        except Exception as exc:
            raise ImageLoadError(f"{name}: cannot decode PIL image: {exc}") from exc
    if isinstance(source, np.ndarray):
        source = torch.from_numpy(np.ascontiguousarray(source))
    if torch.is_tensor(source):
        return source
    raise TypeError(f"{name}: expected a tensor, PIL image, numpy array or file path, got {type(source).__name__}")


def image_to_tensor(source: Any, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float RGB tensor (3, H, W) for a path, PIL image, numpy array or tensor.

    PIL images, files and uint8 arrays map to ``value_range``; float tensors keep their values.
    Grayscale becomes RGB, alpha is composited onto white (PIL) or dropped (tensors).

    >>> image_to_tensor(Image.new("L", (4, 2), 255)).shape
    torch.Size([3, 2, 4])
    """
    return _to_float(_to_rgb_channels(_raw_source(source, "image"), "image"), value_range)
