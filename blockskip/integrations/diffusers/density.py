"""Make the script's `u` the batch's: patch `compute_density_for_timestep_sampling` before the script imports it.

The scripts import `compute_density_for_timestep_sampling` by name from `diffusers.training_utils`
at module top, then per step: `u = compute_density_for_timestep_sampling(weighting_scheme=...,
batch_size=bsz, ...)`, `indices = (u * 1000).long()`, `timesteps =
noise_scheduler_copy.timesteps[indices]`. The table runs from 1000 *down*, so a small `u` is a
noisy sample. Replacing the module attribute before the script runs gives the script our function:
it reads `batch["timestep_u"]` from the calling frame (the loop variable is `batch` in all three
scripts, and reading the frame is immune to data-loader workers and prefetching) and returns it.
The collator made `timestep_u` with the scheduler's own table
(`TimestepConvention.from_scheduler`), so `(u * 1000).long()` indexes exactly the noise level each
crop was made for.

Every call also checks, on the script's own `noise_scheduler_copy` when the caller has one, that
`sigmas[(u * N).long()]` equals the batch's `noise_level`, and that the weighting flags are those
the collator's sampler follows. A mismatch is an error: never train on crops made for other
noise levels.

Example:
    >>> import torch
    >>> from diffusers import FlowMatchEulerDiscreteScheduler
    >>> from blockskip import BlockSkipPlan, DynamicPatchCollator
    >>> from blockskip.crops.conventions import TimestepConvention
    >>> from blockskip.integrations.diffusers.session import ScriptSession
    >>> noise_scheduler_copy = FlowMatchEulerDiscreteScheduler(shift=3.0)
    >>> collate = DynamicPatchCollator(min_size=32, max_size=64, seed=0,
    ...     convention=TimestepConvention.from_scheduler(noise_scheduler_copy))
    >>> batch = collate([torch.zeros(3, 64, 64)] * 3)
    >>> session = ScriptSession(BlockSkipPlan.from_dict({}), density_args=dict(weighting_scheme="none",
    ...     logit_mean=0.0, logit_std=1.0, mode_scale=1.29), verbose=False)
    >>> compute = density_from_batch(session, original=None)
    >>> u = compute(weighting_scheme="none", batch_size=3, logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
    >>> torch.equal(noise_scheduler_copy.sigmas[(u * 1000).long()], batch["noise_level"])
    True
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..patching import Patches
from .errors import ScriptAdapterError
from .session import ScriptSession

TRAINING_UTILS = "diffusers.training_utils"
FUNCTION = "compute_density_for_timestep_sampling"
SCHEDULER_LOCAL = "noise_scheduler_copy"


def install_density_hook(patches: Patches, session: ScriptSession) -> None:
    """Replace `diffusers.training_utils.compute_density_for_timestep_sampling` (undone with `patches`)."""
    import importlib

    module = importlib.import_module(TRAINING_UTILS)
    patches.set(module, FUNCTION, density_from_batch(session, getattr(module, FUNCTION)))


def density_from_batch(session: ScriptSession, original: Callable | None) -> Callable:
    """A `compute_density_for_timestep_sampling` that returns the calling loop's `batch["timestep_u"]`."""

    def compute_density_for_timestep_sampling(
        weighting_scheme: str,
        batch_size: int,
        logit_mean: float | None = None,
        logit_std: float | None = None,
        mode_scale: float | None = None,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        caller = sys._getframe(1)
        try:
            batch = caller.f_locals.get("batch")
            scheduler = caller.f_locals.get(SCHEDULER_LOCAL)
        finally:
            del caller
        if not (isinstance(batch, Mapping) and "timestep_u" in batch):
            raise ScriptAdapterError(
                f"{FUNCTION} was called where no blockskip batch is in scope (the caller has no local `batch` "
                "holding timestep_u): the data loader was not adapted, or the script's loop changed"
            )
        _check_flags(session, weighting_scheme=weighting_scheme, logit_mean=logit_mean, logit_std=logit_std,
                     mode_scale=mode_scale)
        u = batch["timestep_u"].detach().to("cpu", torch.float32)
        if u.shape != (batch_size,):
            raise ScriptAdapterError(
                f"the script asks for {batch_size} timesteps, but the batch carries {tuple(u.shape)} draws"
            )
        if scheduler is not None:
            _check_noise_levels(scheduler, u, batch["noise_level"])
        session.draws_supplied += 1
        return u.to(device)

    if original is not None:
        functools.update_wrapper(compute_density_for_timestep_sampling, original)
    return compute_density_for_timestep_sampling


def _check_flags(session: ScriptSession, **flags: Any) -> None:
    expected = session.density_args or {}
    for name, value in flags.items():
        if name in expected and value is not None and expected[name] != value:
            raise ScriptAdapterError(
                f"the loop samples timesteps with {name}={value!r}, but blockskip's collator drew the batch with "
                f"{name}={expected[name]!r}"
            )


def _check_noise_levels(scheduler: Any, u: torch.Tensor, noise_level: torch.Tensor) -> None:
    n = int(scheduler.config.num_train_timesteps)
    used = scheduler.sigmas[(u * n).long()].float()
    crops = noise_level.detach().to("cpu", torch.float32)
    if not torch.allclose(used, crops, atol=1e-6, rtol=0):
        raise ScriptAdapterError(
            f"the script's scheduler turns the batch's draws into noise levels {used.tolist()}, but the crops were "
            f"made for {crops.tolist()}: its timestep table differs from the one blockskip read from the "
            "scheduler config"
        )
