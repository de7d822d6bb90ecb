"""Noise latents at given levels, in place of kohya's own draw of timesteps.

`FluxNetworkTrainer.get_noise_pred_and_target` draws `noise = randn_like(latents)` and then calls
`flux_train_utils.get_noisy_model_input_and_timesteps(args, scheduler, latents, noise, device,
dtype)`, which draws sigmas and returns `(noisy input, timesteps, sigmas)`. For one call,
`at_noise_levels` swaps that function (looked up on the module at call time) for one that
returns the same three values for the levels blockskip drew before cropping; the trainer's noise,
packing, prediction type and loss are untouched.

Example:
    >>> import argparse, types, torch
    >>> utils = types.SimpleNamespace(get_noisy_model_input_and_timesteps=None)
    >>> scheduler = types.SimpleNamespace(config=types.SimpleNamespace(num_train_timesteps=1000))
    >>> args = argparse.Namespace(ip_noise_gamma=None)
    >>> with at_noise_levels(utils, torch.tensor([0.25])):
    ...     x, t, s = utils.get_noisy_model_input_and_timesteps(args, scheduler, torch.zeros(1, 4, 2, 2),
    ...                                                         torch.ones(1, 4, 2, 2), "cpu", torch.float32)
    >>> t.tolist(), x.flatten()[0].item(), utils.get_noisy_model_input_and_timesteps is None
    ([250.0], 0.25, True)
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..patching import Patches
from .errors import KohyaAdapterError

FUNCTION = "get_noisy_model_input_and_timesteps"


def noisy_input_at(levels: torch.Tensor):
    """A `get_noisy_model_input_and_timesteps` that noises at `levels` (one per sample)."""

    def get_noisy_model_input_and_timesteps(args: argparse.Namespace, noise_scheduler: Any, latents: torch.Tensor,
                                            noise: torch.Tensor, device: Any, dtype: torch.dtype):
        if levels.numel() != latents.shape[0]:
            raise KohyaAdapterError(
                f"{levels.numel()} noise levels for a batch of {latents.shape[0]} latents: the batch was changed "
                "between blockskip's crop and the noising step"
            )
        sigmas = levels.to(device=latents.device, dtype=torch.float32)
        timesteps = sigmas * noise_scheduler.config.num_train_timesteps
        sigmas = sigmas.view(-1, *([1] * (latents.ndim - 1)))
        gamma = getattr(args, "ip_noise_gamma", None)
        if gamma:
            if getattr(args, "ip_noise_gamma_random_strength", False):
                gamma = torch.rand(1, device=latents.device, dtype=dtype) * gamma
            noise = noise + gamma * torch.randn_like(latents, dtype=dtype)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        return noisy.to(dtype), timesteps.to(dtype), sigmas

    return get_noisy_model_input_and_timesteps


@contextmanager
def at_noise_levels(flux_train_utils: Any, levels: torch.Tensor) -> Iterator[None]:
    """Inside the block, `flux_train_utils.get_noisy_model_input_and_timesteps` noises at `levels`."""
    if not hasattr(flux_train_utils, FUNCTION):
        raise KohyaAdapterError(f"{flux_train_utils!r} has no {FUNCTION}: this sd-scripts version is not supported")
    with Patches() as patches:
        patches.set(flux_train_utils, FUNCTION, noisy_input_at(levels))
        yield
