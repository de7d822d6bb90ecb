"""Crop a kohya batch at each sample's noise level: noise level first, then the crop.

kohya's data loader hands `FluxNetworkTrainer.process_batch` whole batches: `images` (float,
`[-1, 1]`, one bucket size per batch) or, with `--cache_latents`, `latents` (`16 × H/8 × W/8`).
`BatchCrops` draws a noise level per sample (see `density`), crops a square of side `s(t)` at a
random position and resizes it to `patches.min_size` — pixels with `DynamicPatchCollator`, cached
latents with `LatentPatchCollator` (an approximation of encoding the resized crop; see
docs/patches.md) — and puts the levels under `NOISE_LEVEL_KEY` for the noising step.

Example:
    >>> import torch
    >>> from blockskip import BlockSkipPlan
    >>> crops = BatchCrops(BlockSkipPlan.from_dict({"patches": {"min_size": 32, "max_size": 64}}))
    >>> batch = crops({"images": torch.rand(2, 3, 64, 64) * 2 - 1, "latents": None, "captions": ["a", "b"]})
    >>> batch["images"].shape, batch[NOISE_LEVEL_KEY].shape, batch["captions"]
    (torch.Size([2, 3, 32, 32]), torch.Size([2]), ['a', 'b'])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...crops.collator import DynamicPatchCollator, LatentPatchCollator
from ...crops.timesteps import TimestepSampler
from ...skipping.plan import BlockSkipPlan
from .errors import KohyaAdapterError

NOISE_LEVEL_KEY = "blockskip_noise_level"
CROP_BOX_KEY = "blockskip_crop_box"
FLUX_VAE_SCALE = 8


class BatchCrops:
    """Timestep-aware crops of kohya batches (pixels or cached latents)."""

    def __init__(self, plan: BlockSkipPlan, sampler: TimestepSampler | None = None, seed: int | None = None):
        common = dict(sampler=sampler, convention="kohya_flux", seed=seed)
        self.pixels = DynamicPatchCollator(plan, **common)
        self.latents = LatentPatchCollator(plan, vae_scale_factor=FLUX_VAE_SCALE, **common)
        self.batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.pixels.set_epoch(epoch)
        self.latents.set_epoch(epoch)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if batch.get("alpha_masks") is not None:
            raise KohyaAdapterError(
                "the batch carries alpha masks (alpha_mask in the dataset config): they would not follow the "
                "timestep-aware crops; pass --blockskip_patches off or drop the masks"
            )
        if batch.get("latents") is not None:
            key, collate = "latents", self.latents
        elif batch.get("images") is not None:
            key, collate = "images", self.pixels
        else:
            raise KohyaAdapterError("the batch has neither images nor cached latents to crop")
        source = batch[key]
        cropped = collate([sample for sample in source])
        out = dict(batch)
        out[key] = cropped[collate.output_key].to(source.dtype)
        out[NOISE_LEVEL_KEY] = cropped["noise_level"]
        out[CROP_BOX_KEY] = cropped["crop_box"]
        self.batches += 1
        return out
