"""Timestep-aware dynamic patch sampling: crop ``s(t)`` pixels, train on ``s_min``.

DiT-BlockSkip trains at a low resolution ``s_min`` and keeps detail by cropping: a sample at noise
level ``t`` (1 = pure noise) gets a random square crop of side

    s(t) = s_min + t * (s_max - s_min)        rounded to ``multiple_of``, clamped to the image,

resized to ``s_min x s_min``. Noisy samples see the whole subject, clean ones see detail.
:class:`DynamicPatchCollator` does this inside any ``DataLoader``; :class:`LatentPatchCollator`
does it on cached VAE latents (an approximation: see ``docs/patches.md``).

Example:
    >>> import torch
    >>> from blockskip.patches import DynamicPatchCollator
    >>> collate = DynamicPatchCollator(min_size=32, max_size=64, multiple_of=16, seed=0)
    >>> batch = collate([{"image": torch.rand(3, 80, 96), "prompt": "a dog"}] * 2)
    >>> batch["pixel_values"].shape, batch["crop_box"].shape, batch["prompt"]
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 4]), ['a dog', 'a dog'])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .timesteps import TimestepConvention, TimestepSampler, UniformSampler, get_convention

__all__ = [
    "SCHEDULES",
    "PatchSchedule",
    "crop_size",
    "ImageLoadError",
    "load_image",
    "image_to_tensor",
    "DynamicPatchCollator",
    "LatentPatchCollator",
    "latent_crop_error",
]

SCHEDULES = ("low_to_high", "high_to_low", "random", "resize", "fixed")
_MODE_BY_NAME = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact", "area": "area"}


class ImageLoadError(OSError):
    """An example could not be read as an image; the message names the file or the example."""


def _round_to_multiple(x: float, multiple: int) -> int:
    return int(math.floor(x / multiple + 0.5)) * multiple


@dataclass(frozen=True)
class PatchSchedule:
    """Crop-size schedule and crop-box placement, in pixels (or latent pixels, for latents).

    ``schedule`` is one of :data:`SCHEDULES`: ``low_to_high`` (the method), ``high_to_low``,
    ``random`` (size uniform over the allowed multiples, independent of ``t``), ``resize``
    (no crop: the centred largest square, i.e. the whole image when square) and ``fixed``
    (``fixed_size`` crop, default ``min_size``). Sides below ``min_size`` are handled by the
    collator, which upscales such images first; here they count as ``min_size``.

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


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = _MODE_BY_NAME[interpolation]
    if mode == "area" and (size[0] > x.shape[-2] or size[1] > x.shape[-1]):
        mode = "bilinear"  # area averaging only makes sense when shrinking
    kwargs = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kwargs)[0]


def _resolve_schedule(patches: Any, overrides: dict[str, Any]) -> PatchSchedule:
    settings = getattr(patches, "patches", patches)  # a plan, a PatchSettings, or None
    names = ("min_size", "max_size", "multiple_of", "schedule")
    values = {k: getattr(settings, k) for k in names if hasattr(settings, k)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values.get("multiple_of") is None:
        class_name = getattr(getattr(patches, "model", None), "class_name", None) or ""
        values["multiple_of"] = 32 if "sana" in class_name.lower() else 16
    return PatchSchedule(**values)


class DynamicPatchCollator:
    """Collate function that crops each example at ``s(t)`` and resizes it to ``s_min``.

    Args:
        patches: a plan (anything with ``.patches``), a ``PatchSettings``, or ``None``; the
            keyword arguments ``min_size``, ``max_size``, ``multiple_of``, ``schedule``,
            ``fixed_size`` override it (``multiple_of=None``: 32 for Sana plans, else 16).
        sampler: a :class:`~blockskip.timesteps.TimestepSampler` (default uniform).
        convention: a name in :data:`blockskip.timesteps.CONVENTIONS` or a ``TimestepConvention``.
        image_key: where a dict example holds its image (tensor CHW, PIL image or file path).
        output_key: batch key of the stacked crops.
        aligned_keys: dict keys cropped with the same box (masks), as ``{key: interpolation}``
            or a sequence of keys (``nearest``).
        collate_fn: base collate for the dict examples (default ``default_collate``); it sees
            each example with its image (and aligned keys) replaced by the processed crop.
        overrides: ``f(example, index) -> {"noise_level": ..., "crop_box": ...} | None``; the
            example dict may also carry those keys itself. This is the hook for a precomputed
            (cached-mode) schedule. Crop boxes are ``(top, left, height, width)`` in the pixels of
            the image the crop is taken from (see ``source_size``).
        seed: ``None`` follows torch's seeding (``torch.initial_seed()`` / the worker seed);
            an int makes batches a function of ``(seed, rank, epoch, worker id, call count)``.
        value_range: the range PIL images, files and uint8 tensors are mapped to.

    The batch holds ``output_key`` ``(B, 3, s_min, s_min)``, ``noise_level``, ``timesteps``,
    ``timestep_input`` (what the transformer receives), ``timestep_u`` (discrete conventions
    only), ``crop_box`` ``(B, 4)`` int64, ``source_size`` ``(B, 2)`` as ``(H, W)``, plus what
    ``collate_fn`` returns for the other fields. Images with a side below ``s_min`` are upscaled
    (aspect kept) until their short side is ``s_min``; ``source_size`` is then the upscaled size.

    >>> import torch
    >>> c = DynamicPatchCollator(min_size=32, max_size=64, multiple_of=16, seed=1)
    >>> b = c([torch.zeros(3, 64, 64), torch.zeros(1, 20, 40)])
    >>> b["pixel_values"].shape, b["source_size"].tolist()
    (torch.Size([2, 3, 32, 32]), [[64, 64], [32, 64]])
    """

    _unit = 1  # pixels per crop-box unit (the latent variant works in latent pixels)

    def __init__(
        self,
        patches: Any = None,
        *,
        min_size: int | None = None,
        max_size: int | None = None,
        multiple_of: int | None = None,
        schedule: str | None = None,
        fixed_size: int | None = None,
        sampler: TimestepSampler | None = None,
        convention: str | TimestepConvention = "diffusers_flux",
        image_key: str = "image",
        output_key: str = "pixel_values",
        aligned_keys: Mapping[str, str] | Sequence[str] = (),
        collate_fn: Callable[[list], Any] | None = None,
        overrides: Callable[[Any, int], Mapping[str, Any] | None] | None = None,
        noise_level_key: str = "noise_level",
        crop_box_key: str = "crop_box",
        interpolation: str = "bilinear",
        value_range: tuple[float, float] = (-1.0, 1.0),
        seed: int | None = None,
        rank: int | None = None,
    ):
        explicit = dict(min_size=min_size, max_size=max_size, multiple_of=multiple_of, schedule=schedule)
        self.schedule = _resolve_schedule(patches, {**explicit, "fixed_size": fixed_size})
        self._units = self.schedule.scaled(self._unit) if self._unit != 1 else self.schedule
        self.sampler = sampler if sampler is not None else UniformSampler()
        self.convention = get_convention(convention)
        self.image_key, self.output_key = image_key, output_key
        if not isinstance(aligned_keys, Mapping):
            aligned_keys = {k: "nearest" for k in aligned_keys}
        for key, mode in {"(interpolation)": interpolation, **aligned_keys}.items():
            if mode not in _MODE_BY_NAME:
                raise ValueError(f"{key}: unknown interpolation {mode!r}; choose one of {', '.join(_MODE_BY_NAME)}")
        self.aligned_keys = dict(aligned_keys)
        self.collate_fn = collate_fn
        self.overrides = overrides
        self.noise_level_key, self.crop_box_key = noise_level_key, crop_box_key
        self.interpolation, self.value_range = interpolation, tuple(value_range)
        self.seed = seed
        self.rank = rank if rank is not None else _current_rank()
        self.epoch = 0
        self._generator, self._generator_key = None, None

    # -- seeding ----------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start the random stream of ``epoch`` (call before creating each epoch's iterator when
        ``seed`` is an int and workers are not persistent, or every epoch repeats its draws)."""
        self.epoch = int(epoch)

    def generator(self) -> torch.Generator:
        """This process's generator, (re)seeded from seed, rank, epoch and worker id on first use."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        key = (os.getpid(), worker, self.epoch)
        if self._generator_key != key:
            base = self.seed if self.seed is not None else (info.seed if info is not None else torch.initial_seed())
            words = np.random.SeedSequence([int(base) % 2**64, self.rank, self.epoch, worker + 1]).generate_state(2)
            self._generator = torch.Generator().manual_seed(int(words[0]) << 31 ^ int(words[1]))
            self._generator_key = key
        return self._generator

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_generator"], state["_generator_key"] = None, None
        return state

    # -- per-example work -------------------------------------------------------------------
    def _name(self, example: Any, index: int) -> str:
        source = example.get(self.image_key) if isinstance(example, Mapping) else example
        return f"example {index}" + (f" ({os.fspath(source)!r})" if isinstance(source, (str, os.PathLike)) else "")

    def _load(self, source: Any, name: str) -> torch.Tensor:
        return _to_rgb_channels(_raw_source(source, name), name)

    def _load_aligned(self, source: Any, name: str, size: tuple[int, int]) -> torch.Tensor:
        if isinstance(source, (str, os.PathLike)):
            source = load_image(source)
        if isinstance(source, Image.Image):  # keep the mode's own channels (a mask stays 1 channel)
            source = source if source.mode in ("L", "LA", "RGB", "RGBA") else source.convert("L")
            source = torch.from_numpy(np.array(source)).to(torch.uint8)
            source = source.permute(2, 0, 1) if source.ndim == 3 else source
        x = _raw_source(source, name)
        x = x[None] if x.ndim == 2 else x
        x = _to_float(x, (0.0, 1.0))
        if tuple(x.shape[-2:]) != size:
            raise ValueError(f"{name}: shape {tuple(x.shape)} does not match its image's size {size}")
        return x

    def _working_size(self, height: int, width: int) -> tuple[int, int]:
        short = min(height, width)
        if short >= self._units.min_size:
            return height, width
        scale = self._units.min_size / short
        return max(self._units.min_size, round(height * scale)), max(self._units.min_size, round(width * scale))

    def _example_overrides(self, example: Any, index: int) -> dict[str, Any]:
        found = {}
        if isinstance(example, Mapping):
            for key, field in ((self.noise_level_key, "noise_level"), (self.crop_box_key, "crop_box")):
                if example.get(key) is not None:
                    found[field] = example[key]
        if self.overrides is not None:
            found.update({k: v for k, v in (self.overrides(example, index) or {}).items() if v is not None})
        return found

    def _check_box(self, box: Any, size: tuple[int, int], name: str) -> tuple[int, int, int, int]:
        values = [int(v) for v in (box.tolist() if torch.is_tensor(box) else box)]
        if len(values) != 4 or any(v % self._unit for v in values):
            raise ValueError(f"{name}: crop_box must be 4 integers (top, left, height, width)"
                             f"{f' in multiples of {self._unit}' if self._unit > 1 else ''}, got {values}")
        top, left, h, w = (v // self._unit for v in values)
        if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > size[0] or left + w > size[1]:
            raise ValueError(f"{name}: crop_box {values} does not fit in the source of size "
                             f"{[s * self._unit for s in size]}")
        return top, left, h, w

    # -- collate ----------------------------------------------------------------------------
    def __call__(self, examples: Sequence[Any]) -> dict[str, Any]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty list of examples")
        generator = self.generator()
        drawn = self.sampler.sample(len(examples), generator)
        found = [self._example_overrides(ex, i) for i, ex in enumerate(examples)]
        levels = torch.tensor([float(f.get("noise_level", d)) for f, d in zip(found, drawn.tolist())])
        times = self.convention.from_noise_level(levels)
        out_size = (self._units.min_size, self._units.min_size)

        crops, aligned, boxes, sizes, passed_on = [], {k: [] for k in self.aligned_keys}, [], [], []
        for i, example in enumerate(examples):
            name = self._name(example, i)
            is_dict = isinstance(example, Mapping)
            if is_dict and self.image_key not in example:
                raise KeyError(f"{name} has no {self.image_key!r} key (keys: {sorted(map(str, example))})")
            image = self._load(example[self.image_key] if is_dict else example, name)
            height, width = image.shape[-2:]
            work = self._working_size(height, width)
            if work != (height, width):
                image = _resize(_to_float(image, self.value_range), work, self.interpolation)
            if "crop_box" in found[i]:
                top, left, h, w = self._check_box(found[i]["crop_box"], work, name)
            else:
                top, left, h, w = self._units.crop_box(*work, float(times.noise_level[i]), generator)
            crop = image[:, top : top + h, left : left + w]
            # resizing is linear with weights summing to one, so mapping uint8 to value_range after
            # the resize gives the same result on far fewer pixels
            resized = _resize(crop.float(), out_size, self.interpolation)
            crops.append(_uint8_to_range(resized, self.value_range) if crop.dtype == torch.uint8 else resized)
            boxes.append([v * self._unit for v in (top, left, h, w)])
            sizes.append([v * self._unit for v in work])
            if not is_dict:
                continue
            rest = {k: v for k, v in example.items() if k not in (self.noise_level_key, self.crop_box_key)}
            rest[self.image_key] = crops[-1]
            for key, mode in self.aligned_keys.items():
                extra = self._load_aligned(example[key], f"{name} key {key!r}", (height, width))
                extra = _resize(extra, work, mode)[:, top : top + h, left : left + w]
                rest[key] = _resize(extra, out_size, mode)
                aligned[key].append(rest[key])
            passed_on.append(rest)

        batch: dict[str, Any] = {}
        if passed_on:
            if len(passed_on) != len(examples):
                raise TypeError("mix of dict and non-dict examples in one batch")
            base = (self.collate_fn or torch.utils.data.default_collate)(passed_on)
            if not isinstance(base, Mapping):
                raise TypeError(f"collate_fn must return a mapping, got {type(base).__name__}")
            batch.update(base)
        batch.update({key: torch.stack(values) for key, values in aligned.items()})
        batch[self.output_key] = torch.stack(crops)
        batch["noise_level"] = times.noise_level
        batch["timesteps"] = times.timesteps
        batch["timestep_input"] = times.model_input
        if times.u is not None:
            batch["timestep_u"] = times.u
        batch["crop_box"] = torch.tensor(boxes, dtype=torch.int64)
        batch["source_size"] = torch.tensor(sizes, dtype=torch.int64)
        return batch


class LatentPatchCollator(DynamicPatchCollator):
    """:class:`DynamicPatchCollator` for cached VAE latents ``(C, h, w)``: crops the latents.

    Sizes stay in pixels (``min_size``, ``max_size``, ``multiple_of``); the crop granularity in
    latents is ``multiple_of / vae_scale_factor`` (2 for FLUX's 16 px over an 8x VAE, 1 for Sana's
    32x DC-AE) and positions fall on latent pixels. ``crop_box`` and ``source_size`` are reported in
    pixels (latent pixels x ``vae_scale_factor``). Latents are shrunk with ``area`` averaging by
    default. Resizing latents is not the same as encoding a resized image: measure the gap on your
    own VAE with :func:`latent_crop_error`; ``docs/patches.md`` reports what we measured. Use pixel
    crops when you can.

    >>> import torch
    >>> c = LatentPatchCollator(min_size=32, max_size=64, multiple_of=16, vae_scale_factor=8, seed=0)
    >>> c([torch.randn(16, 10, 12)])["latents"].shape
    torch.Size([1, 16, 4, 4])
    """

    def __init__(self, patches: Any = None, *, vae_scale_factor: int = 8, image_key: str = "latents",
                 output_key: str = "latents", interpolation: str = "area", **kwargs: Any):
        if not (isinstance(vae_scale_factor, int) and vae_scale_factor > 0):
            raise ValueError(f"vae_scale_factor must be a positive integer, got {vae_scale_factor!r}")
        self._unit = vae_scale_factor
        super().__init__(patches, image_key=image_key, output_key=output_key, interpolation=interpolation, **kwargs)

    def _load(self, source: Any, name: str) -> torch.Tensor:
        if not torch.is_tensor(source):
            raise TypeError(f"{name}: latents must be a tensor (C, h, w), got {type(source).__name__}")
        if source.ndim == 4 and source.shape[0] == 1:
            source = source[0]
        if source.ndim != 3 or not source.is_floating_point():
            raise ValueError(
                f"{name}: latents must be a float tensor (C, h, w), got {source.dtype} {tuple(source.shape)}"
            )
        return source


def latent_crop_error(
    encode: Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[torch.Tensor],
    patches: Any = None,
    *,
    noise_levels: Sequence[float] = (0.0, 0.5, 1.0),
    vae_scale_factor: int = 8,
    seed: int = 0,
    **collator_kwargs: Any,
) -> dict[float, float]:
    """Mean relative error of :class:`LatentPatchCollator` against encoding the resized crop.

    ``encode`` maps a batch ``(1, 3, H, W)`` in the VAE's input range to latents ``(1, C, h, w)``
    (for a diffusers VAE: ``lambda x: vae.encode(x).latent_dist.mean``). For each image and noise
    level it compares ``resize(crop(encode(image)))`` with ``encode(resize(crop(image)))`` on the
    same crop box (the pixel crop resized as :class:`DynamicPatchCollator` does: bilinear,
    antialiased) and returns ``{noise_level: mean ||a - b|| / ||b||}``.

    >>> import torch.nn.functional as F
    >>> pool = lambda x: F.avg_pool2d(x, 8)  # an ideal local "encoder"
    >>> err = latent_crop_error(pool, [torch.rand(3, 96, 96)], min_size=32, max_size=96, multiple_of=16)
    >>> err[0.0] < 1e-6
    True
    """
    latent = LatentPatchCollator(patches, vae_scale_factor=vae_scale_factor, seed=seed, **collator_kwargs)
    out_size = (latent.schedule.min_size, latent.schedule.min_size)
    errors: dict[float, list[float]] = {float(t): [] for t in noise_levels}
    with torch.no_grad():
        for image in images:
            z = encode(image[None].float())[0]
            for t in errors:
                batch = latent([{"latents": z, "noise_level": t}])
                top, left, h, w = batch["crop_box"][0].tolist()
                ref = encode(_resize(image[:, top : top + h, left : left + w].float(), out_size, "bilinear")[None])[0]
                errors[t].append(float((batch["latents"][0] - ref).norm() / ref.norm()))
    return {t: sum(v) / len(v) for t, v in errors.items()}


def _current_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", 0))
