"""Collators that crop each example at ``s(t)`` and resize it to ``s_min``, inside any ``DataLoader``.

:class:`DynamicPatchCollator` draws a noise level per example, crops the image at the side the
:class:`~blockskip.crops.patches.PatchSchedule` gives for it, resizes the crop to ``s_min x s_min`` and
reports the noise level in the trainer's timestep convention. :class:`LatentPatchCollator` does it
on cached VAE latents (an approximation: see ``docs/patches.md``); :func:`latent_crop_error`
measures that approximation on a given encoder.

Example:
    >>> import torch
    >>> from blockskip.crops.collator import DynamicPatchCollator
    >>> collate = DynamicPatchCollator(min_size=32, max_size=64, multiple_of=16, seed=0)
    >>> batch = collate([{"image": torch.rand(3, 80, 96), "prompt": "a dog"}] * 2)
    >>> batch["pixel_values"].shape, batch["crop_box"].shape, batch["prompt"]
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 4]), ['a dog', 'a dog'])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .conventions import TimestepConvention, get_convention
from .images import _raw_source, _to_float, _to_rgb_channels, _uint8_to_range, load_image
from .patches import resolve_patch_schedule, working_size
from .timesteps import TimestepSampler, UniformSampler

__all__ = [
    "DynamicPatchCollator",
    "LatentPatchCollator",
    "latent_crop_error",
]

_MODE_BY_NAME = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact", "area": "area"}


def _resize(x: torch.Tensor, size: tuple[int, int], interpolation: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    mode = _MODE_BY_NAME[interpolation]
    if mode == "area" and (size[0] > x.shape[-2] or size[1] > x.shape[-1]):
        mode = "bilinear"  # area averaging only makes sense when shrinking
    kwargs = {"antialias": True, "align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kwargs)[0]


class DynamicPatchCollator:
    """Collate function that crops each example at ``s(t)`` and resizes it to ``s_min``.

    Args:
        patches: a plan (anything with ``.patches``), a ``PatchSettings``, or ``None``; the
            keyword arguments ``min_size``, ``max_size``, ``multiple_of``, ``schedule``,
            ``fixed_size`` override it (``multiple_of=None``: 32 for Sana plans, else 16).
        sampler: a :class:`~blockskip.crops.timesteps.TimestepSampler` (default uniform).
        convention: a name in :data:`blockskip.crops.conventions.CONVENTIONS` or a ``TimestepConvention``.
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
        self.schedule = resolve_patch_schedule(patches, {**explicit, "fixed_size": fixed_size})
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
        return working_size(height, width, self._units.min_size)

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
