"""Timestep-aware crop sizes: crop ``s(t)`` pixels, train on ``s_min``.

DiT-BlockSkip trains at a low resolution ``s_min`` and keeps detail by cropping: a sample at noise
level ``t`` (1 = pure noise) gets a random square crop of side

    s(t) = s_min + t * (s_max - s_min)        rounded to ``multiple_of``, clamped to the image,

resized to ``s_min x s_min``. Noisy samples see the whole subject, clean ones see detail. This
module holds the schedule (:class:`PatchSchedule`, the method and its ablations; a plan's one
from :func:`resolve_patch_schedule`) and :func:`working_size`, the size an image too small to crop
is upscaled to first. The collators that apply it inside a ``DataLoader`` are in
:mod:`blockskip.crops.collator`.

Example:
    >>> from blockskip.crops.patches import PatchSchedule
    >>> schedule = PatchSchedule(min_size=256, max_size=512, multiple_of=16)
    >>> [schedule.crop_size(t) for t in (0.0, 0.5, 1.0)]
    [256, 384, 512]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "SCHEDULES",
    "PatchSchedule",
    "crop_size",
    "resolve_patch_schedule",
    "working_size",
]

SCHEDULES = ("low_to_high", "high_to_low", "random", "resize", "fixed")


def _round_to_multiple(x: float, multiple: int) -> int:
    return int(math.floor(x / multiple + 0.5)) * multiple


@dataclass(frozen=True)
class PatchSchedule:
    """Crop-size schedule and crop-box placement, in pixels (or latent pixels, for latents).

    ``schedule`` is one of :data:`SCHEDULES`: ``low_to_high`` (the method), ``high_to_low``,
    ``random`` (size uniform over the allowed multiples, independent of ``t``), ``resize``
    (no crop: the centred largest square, i.e. the whole image when square) and ``fixed``
    (``fixed_size`` crop, default ``min_size``). Sides below ``min_size`` are handled by the
    collator, which upscales such images first (to :func:`working_size`); here they count as
    ``min_size``.

    >>> s = PatchSchedule(256, 512, 16)
    >>> [s.crop_size(t, image_side=1024) for t in (0.0, 0.5, 0.99, 1.0)]
    [256, 384, 512, 512]
    >>> s.crop_size(1.0, image_side=300)  # clamped to the image, rounded down to 16
    288
    """

    min_size: int = 256
    max_size: int = 512
    multiple_of: int = 16
    schedule: str = "low_to_high"
    fixed_size: int | None = None

    def __post_init__(self):
        m = self.multiple_of
        if not (isinstance(m, int) and m > 0):
            raise ValueError(f"multiple_of must be a positive integer, got {m!r}")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}")
        for name in ("min_size", "max_size", "fixed_size"):
            value = getattr(self, name)
            if value is not None and value % m:
                raise ValueError(f"{name}={value} is not a multiple of multiple_of={m}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown patch schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.fixed_size is not None and self.fixed_size < self.min_size:
            raise ValueError(f"fixed_size={self.fixed_size} is below min_size={self.min_size}")

    def bounds(self, image_side: int | None = None) -> tuple[int, int]:
        """Smallest and largest crop side allowed for an image whose short side is ``image_side``."""
        side = max(self.min_size, image_side if image_side is not None else self.max_size)
        return self.min_size, min(self.max_size, side // self.multiple_of * self.multiple_of)

    def crop_size(
        self, noise_level: float, image_side: int | None = None, generator: torch.Generator | None = None
    ) -> int:
        """Crop side for noise level ``noise_level`` in ``[0, 1]`` (1 = pure noise)."""
        t = float(noise_level)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"noise_level must lie in [0, 1], got {noise_level}")
        lo, hi = self.bounds(image_side)
        if self.schedule == "resize":
            return max(self.min_size, image_side) if image_side is not None else self.max_size
        if self.schedule == "random":
            steps = (hi - lo) // self.multiple_of
            return lo + self.multiple_of * int(torch.randint(steps + 1, (), generator=generator))
        raw = {
            "low_to_high": self.min_size + t * (self.max_size - self.min_size),
            "high_to_low": self.max_size - t * (self.max_size - self.min_size),
            "fixed": self.fixed_size or self.min_size,
        }[self.schedule]
        return min(hi, max(lo, _round_to_multiple(raw, self.multiple_of)))

    def crop_box(
        self, height: int, width: int, noise_level: float, generator: torch.Generator | None = None
    ) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of the crop for an image of at least ``min_size`` a side."""
        if min(height, width) < self.min_size:
            raise ValueError(f"image {height}x{width} is smaller than min_size={self.min_size}; upscale it first")
        side = self.crop_size(noise_level, min(height, width), generator)
        if self.schedule == "resize":
            return (height - side) // 2, (width - side) // 2, side, side
        top = int(torch.randint(height - side + 1, (), generator=generator))
        left = int(torch.randint(width - side + 1, (), generator=generator))
        return top, left, side, side

    def scaled(self, unit: int) -> "PatchSchedule":
        """The same schedule measured in units of ``unit`` pixels (latent pixels)."""
        sizes = (self.min_size, self.max_size, self.multiple_of) + ((self.fixed_size,) if self.fixed_size else ())
        if any(v % unit for v in sizes):
            raise ValueError(f"sizes {sizes} must all be multiples of vae_scale_factor={unit}")
        fixed = self.fixed_size // unit if self.fixed_size else None
        return PatchSchedule(
            self.min_size // unit, self.max_size // unit, self.multiple_of // unit, self.schedule, fixed
        )


def crop_size(
    noise_level: float,
    min_size: int,
    max_size: int,
    multiple_of: int = 16,
    schedule: str = "low_to_high",
    *,
    image_side: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """``s(t)`` for one noise level: shorthand for :meth:`PatchSchedule.crop_size`.

    >>> crop_size(0.5, 256, 512)
    384
    """
    return PatchSchedule(min_size, max_size, multiple_of, schedule).crop_size(noise_level, image_side, generator)


def resolve_patch_schedule(patches: Any = None, overrides: dict[str, Any] | None = None) -> PatchSchedule:
    """The :class:`PatchSchedule` of a plan (anything with ``.patches``), a ``PatchSettings`` or ``None``.

    ``overrides`` (``min_size``, ``max_size``, ``multiple_of``, ``schedule``, ``fixed_size``) replace
    the plan's values where not ``None``; a ``multiple_of`` still ``None`` is 32 for a Sana plan, else 16.

    >>> resolve_patch_schedule(None, {"min_size": 32, "max_size": 64, "schedule": None})
    PatchSchedule(min_size=32, max_size=64, multiple_of=16, schedule='low_to_high', fixed_size=None)
    """
    settings = getattr(patches, "patches", patches)  # a plan, a PatchSettings, or None
    names = ("min_size", "max_size", "multiple_of", "schedule")
    values = {k: getattr(settings, k) for k in names if hasattr(settings, k)}
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if values.get("multiple_of") is None:
        class_name = getattr(getattr(patches, "model", None), "class_name", None) or ""
        values["multiple_of"] = 32 if "sana" in class_name.lower() else 16
    return PatchSchedule(**values)


def working_size(height: int, width: int, min_size: int) -> tuple[int, int]:
    """Size ``(height, width)`` an image is upscaled to before cropping: unchanged when its short
    side is at least ``min_size``, otherwise scaled (aspect kept) until the short side is ``min_size``.

    >>> working_size(20, 40, 32)
    (32, 64)
    >>> working_size(30, 100, 32)  # sides rounded to the nearest pixel
    (32, 107)
    >>> working_size(64, 48, 32)  # large enough: unchanged
    (64, 48)
    """
    short = min(height, width)
    if short >= min_size:
        return height, width
    scale = min_size / short
    return max(min_size, round(height * scale)), max(min_size, round(width * scale))
