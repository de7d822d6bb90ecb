"""Noise level first, then the crop, then the noise: blockskip's order inside SimpleTuner's `prepare_batch`.

`ModelFoundation.prepare_batch(batch, state)` takes the collated batch (`latent_batch`: latents
from SimpleTuner's VAE cache, one aspect bucket per batch), moves it to the device, draws
`noise = randn_like(latents)`, then `sigmas, timesteps = self.sample_flow_sigmas(batch, state)`,
builds `noisy_latents` and calls `prepare_batch_conditions` (FLUX packs nothing there without
conditioning; `model_predict` packs the latents and builds image ids from their shape). The
adapter wraps `prepare_batch` on the family object:

1. **noise level**: SimpleTuner's own `sample_flow_sigmas` draws the sigmas, on a probe batch
   whose latents have the training shape (`patches.min_size / 8` a side), so every option that
   shapes the distribution (`--flow_schedule_shift`, `--flow_schedule_auto_shift` at the training
   resolution, `--flow_use_uniform_schedule`, custom timesteps, per-dataset offsets) applies;
2. **crop**: a `LatentPatchCollator` crops each cached latent at `s(sigma)` (in pixels: a square
   of `s / 8` latents) and shrinks it to `min_size / 8` with area averaging;
3. **noise**: SimpleTuner's `prepare_batch` runs on the cropped latents, unchanged, with
   `sample_flow_sigmas` answering the sigmas and timesteps drawn in step 1 (an instance attribute
   for the duration of the call), so `randn_like` draws noise of the cropped shape and the loss
   targets the cropped latents.

Cropping latents is an approximation of cropping pixels (`resize(crop(E(x))) != E(resize(crop(x)))`;
see docs/patches.md). SimpleTuner has no per-step VAE path to crop pixels instead.

Example:
    >>> import torch
    >>> from blockskip.crops.collator import LatentPatchCollator
    >>> collator = LatentPatchCollator(min_size=32, max_size=64, multiple_of=16, vae_scale_factor=8,
    ...     convention="simpletuner", seed=0)
    >>> crops = crop_latents(collator, torch.randn(2, 16, 8, 12), torch.tensor([1.0, 0.0]))
    >>> crops["latents"].shape, crops["crop_box"][:, 2].tolist()
    (torch.Size([2, 16, 4, 4]), [64, 32])
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ...crops.collator import LatentPatchCollator
from ..patching import Patches
from .errors import SimpleTunerAdapterError
from .session import TrainingSession

# batch entries that are spatial like the latents: they would need the same crop
SPATIAL_KEYS = ("conditioning_latents", "conditioning_pixel_values", "conditioning_image_embeds")


def crop_latents(collator: LatentPatchCollator, latents: torch.Tensor, sigmas: torch.Tensor) -> dict[str, Any]:
    """Crop each of `latents` (B, C, h, w) at the side its noise level in `sigmas` (B,) calls for."""
    levels = sigmas.detach().float().reshape(len(latents), -1)[:, 0].cpu().tolist()
    examples = [{"latents": latent, "noise_level": level} for latent, level in zip(latents.detach(), levels)]
    return collator(examples)


def build_collator(session: TrainingSession) -> LatentPatchCollator:
    return LatentPatchCollator(session.plan, vae_scale_factor=session.family.vae_scale_factor, convention="simpletuner")


def install_batch_hook(patches: Patches, family_model: Any, session: TrainingSession) -> None:
    """Wrap `family_model.prepare_batch` (undone with `patches`)."""
    original = family_model.prepare_batch
    session.collator = build_collator(session)
    patches_ = session.plan.patches
    session.log(
        f"dynamic patches on cached latents: {patches_.schedule} crops of {patches_.min_size}-{patches_.max_size} px, "
        f"trained at {patches_.min_size} px ({patches_.min_size // session.family.vae_scale_factor} latents a side)"
    )

    @functools.wraps(original)
    def prepare_batch(batch: dict, state: dict, *args: Any, **kwargs: Any):
        if not batch:
            return original(batch, state, *args, **kwargs)
        _refuse_spatial_conditioning(batch)
        latents = batch.get("latent_batch")
        if not torch.is_tensor(latents) or latents.ndim != 4:
            shape = tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__
            raise SimpleTunerAdapterError(f"expected image latents (B, C, h, w) in batch['latent_batch'], got {shape}")
        sigmas, timesteps = _draw_noise_levels(family_model, session, batch, state, latents)
        crops = crop_latents(session.collator, latents, sigmas)
        batch = dict(batch)
        batch["latent_batch"] = crops["latents"].to(latents.device, latents.dtype)
        with _answer_sigmas(family_model, sigmas, timesteps):
            prepared = original(batch, state, *args, **kwargs)
        _check_sigmas(prepared, sigmas)
        for key in ("crop_box", "source_size", "noise_level"):
            prepared[f"blockskip_{key}"] = crops[key]
        if session.steps == 0:
            session.log(f"first batch: cached latents {tuple(latents.shape)} cropped to {tuple(prepared['latents'].shape)}")
        session.steps += 1
        session.last_batch = {
            "source_shape": tuple(latents.shape),
            "latent_shape": tuple(prepared["latents"].shape),
            "noise_level": crops["noise_level"].tolist(),
            "crop_box": crops["crop_box"].tolist(),
        }
        return prepared

    patches.set(family_model, "prepare_batch", prepare_batch)


def _refuse_spatial_conditioning(batch: dict) -> None:
    for key in SPATIAL_KEYS:
        value = batch.get(key)
        if value is not None and not (isinstance(value, (list, tuple, dict)) and len(value) == 0):
            raise SimpleTunerAdapterError(
                f"the batch carries {key}: conditioning or mask datasets are spatial like the latents and would need "
                "the same crop, which the adapter does not do; train without them"
            )


def _draw_noise_levels(family_model: Any, session: TrainingSession, batch: dict, state: dict, latents: torch.Tensor):
    side = session.plan.patches.min_size // session.family.vae_scale_factor
    shape = (latents.shape[0], latents.shape[1], side, side)
    device = family_model.accelerator.device
    probe = {**batch, "latents": torch.zeros(shape, device=device), "noise": torch.zeros(shape, device=device)}
    sigmas, timesteps = family_model.sample_flow_sigmas(batch=probe, state=state)
    level = sigmas.detach().float().reshape(len(latents), -1)[:, 0]
    if ((level < 0) | (level > 1)).any():
        raise SimpleTunerAdapterError(f"SimpleTuner drew sigmas outside [0, 1]: {level.tolist()}")
    return sigmas, timesteps


@contextmanager
def _answer_sigmas(family_model: Any, sigmas: torch.Tensor, timesteps: torch.Tensor) -> Iterator[None]:
    """Inside, `family_model.sample_flow_sigmas` returns these draws (an instance attribute)."""
    with Patches() as patches:
        patches.set(family_model, "sample_flow_sigmas", lambda batch, state: (sigmas, timesteps))
        yield


def _check_sigmas(prepared: dict, sigmas: torch.Tensor) -> None:
    used = prepared.get("sigmas")
    if used is None:
        raise SimpleTunerAdapterError("SimpleTuner's prepare_batch did not use sample_flow_sigmas (no batch['sigmas'])")
    used = used.detach().float().reshape(len(sigmas), -1)[:, 0].cpu()
    if not torch.allclose(used, sigmas.detach().float().reshape(len(sigmas), -1)[:, 0].cpu(), atol=1e-6):
        raise SimpleTunerAdapterError(
            f"SimpleTuner noised the batch at sigmas {used.tolist()}, not at the levels its crops were made for"
        )
