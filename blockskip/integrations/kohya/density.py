"""The noise-level density kohya's FLUX loop would draw, so blockskip can draw it first.

With dynamic patches the crop size depends on the noise level, so blockskip draws each sample's
level before the crop, with the density of the run's own flags, and the loop then noises at that
level. `flux_train_utils.get_noisy_model_input_and_timesteps` draws sigmas directly:

- `uniform`, `sigmoid`, `shift`: closed forms, the same here;
- `flux_shift`: a resolution-dependent shift of the *trained* latents (`patches.min_size`);
- `sigma` (the default): `u` from `--weighting_scheme` indexes the descending 1000-step table of a
  `FlowMatchEulerDiscreteScheduler(shift=--discrete_flow_shift)`; here the same density, shifted
  the same way, without snapping to the table (levels differ by less than its 0.001 spacing).

Example:
    >>> import argparse
    >>> args = argparse.Namespace(timestep_sampling="shift", sigmoid_scale=1.0, discrete_flow_shift=3.1582)
    >>> kohya_sampler(args, train_size=512).shift
    3.1582
"""

from __future__ import annotations

import argparse

from ...crops.timesteps import ShiftedSampler, TimestepSampler, sampler_from_diffusers_args, sampler_from_kohya_args

_DIRECT = ("uniform", "sigmoid", "shift", "flux_shift")


def kohya_sampler(args: argparse.Namespace, train_size: int) -> TimestepSampler:
    """The sampler of noise levels (1 = pure noise) for kohya's `--timestep_sampling` and friends."""
    sampling = getattr(args, "timestep_sampling", "sigma")
    sigmoid_scale = float(getattr(args, "sigmoid_scale", 1.0) or 1.0)
    shift = float(getattr(args, "discrete_flow_shift", 3.0) or 1.0)
    if sampling in _DIRECT:
        return sampler_from_kohya_args(
            sampling, sigmoid_scale=sigmoid_scale, discrete_flow_shift=shift, image_size=(train_size, train_size)
        )
    base = sampler_from_diffusers_args(
        getattr(args, "weighting_scheme", "uniform") or "uniform",
        logit_mean=float(getattr(args, "logit_mean", 0.0) or 0.0),
        logit_std=float(getattr(args, "logit_std", 1.0) or 1.0),
        mode_scale=float(getattr(args, "mode_scale", 1.29) or 1.29),
    )
    return base if shift == 1.0 else ShiftedSampler(base, shift)
