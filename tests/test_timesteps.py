"""Timestep samplers (densities, KS tests) and trainer conventions (direction, real scheduler)."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from blockskip.crops.conventions import CONVENTIONS, TimestepConvention, get_convention
from blockskip.crops.timesteps import (
    LogitNormalSampler,
    ModeSampler,
    ShiftedSampler,
    SigmoidSampler,
    UniformSampler,
    make_sampler,
    partial_uniform,
    resolution_shift,
    sampler_from_diffusers_args,
    sampler_from_kohya_args,
)

N = 4000
ALPHA = 0.01


def _draw(sampler, n=N, seed=0):
    return sampler.sample(n, torch.Generator().manual_seed(seed)).double().numpy()


def _mode_map(u, s):
    return 1 - u - s * (np.cos(np.pi * u / 2) ** 2 - 1 + u)


# Reference CDFs written independently of the module (scipy where it has the distribution).
REFERENCES = [
    (UniformSampler(), stats.uniform(0, 1).cdf),
    (partial_uniform(), stats.uniform(0.5, 0.4).cdf),
    (LogitNormalSampler(0.0, 1.0), lambda x: stats.norm.cdf(np.log(x / (1 - x)))),
    (LogitNormalSampler(0.7, 0.5), lambda x: stats.norm(0.7, 0.5).cdf(np.log(x / (1 - x)))),
    (SigmoidSampler(1.7), lambda x: stats.norm(0, 1.7).cdf(np.log(x / (1 - x)))),
    # shift s of a uniform: P(s u / (1 + (s-1) u) <= x) = x / (s - (s-1) x)
    (ShiftedSampler(UniformSampler(), 3.0), lambda x: x / (3.0 - 2.0 * x)),
]


@pytest.mark.parametrize("sampler,ref_cdf", REFERENCES, ids=lambda v: repr(v)[:40])
def test_empirical_distribution_matches_density(sampler, ref_cdf):
    x = _draw(sampler)
    assert x.min() >= 0 and x.max() <= 1
    assert stats.kstest(x, ref_cdf).pvalue > ALPHA
    # the module's own cdf agrees with the reference
    grid = np.linspace(0.01, 0.99, 49)
    np.testing.assert_allclose(sampler.cdf(grid), ref_cdf(grid), atol=1e-6)


@pytest.mark.parametrize("scale", [0.0, 0.8, 1.29, -0.5])
def test_mode_sampler_matches_sd3_mode_density(scale):
    sampler = ModeSampler(scale)
    # reference: push a fine uniform grid through the SD3 map and read off the empirical cdf
    ref = np.sort(_mode_map(np.linspace(0, 1, 200001), scale))
    ref_cdf = lambda x: np.searchsorted(ref, x) / ref.size  # noqa: E731
    assert stats.kstest(_draw(sampler), ref_cdf).pvalue > ALPHA
    grid = np.linspace(0.02, 0.98, 25)
    np.testing.assert_allclose(sampler.cdf(grid), ref_cdf(grid), atol=1e-4)


def test_resolution_shift_matches_diffusers_flux_and_scheduler():
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq in (256, 1024, 4096):
        assert resolution_shift(seq) == pytest.approx(math.exp(calculate_shift(seq)), rel=1e-9)
    # shifting a level by exp(mu) is the scheduler's exponential time shift
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    mu = calculate_shift(1024)
    ours = ShiftedSampler(UniformSampler(), math.exp(mu)).apply(t)
    torch.testing.assert_close(ours, sched.time_shift(mu, 1.0, t))
    # for_resolution: 512x512 on FLUX is (512/16)^2 = 1024 tokens
    assert ShiftedSampler.for_resolution(UniformSampler(), 512, 512).shift == pytest.approx(math.exp(mu))


NAMES = ["uniform", "logit_normal", "sigmoid", "mode", "puts"]


@given(n=st.integers(1, 64), seed=st.integers(0, 2**31), name=st.sampled_from(NAMES))
@settings(max_examples=25, deadline=None)
def test_samplers_are_deterministic_and_in_range(n, seed, name):
    sampler = make_sampler(name, shift=2.0 if seed % 2 else None)
    a = sampler.sample(n, torch.Generator().manual_seed(seed))
    b = sampler.sample(n, torch.Generator().manual_seed(seed))
    assert a.shape == (n,) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert bool(((a >= 0) & (a <= 1)).all())


def test_bad_sampler_parameters_are_rejected():
    for bad in (lambda: UniformSampler(0.9, 0.5), lambda: LogitNormalSampler(std=0), lambda: ModeSampler(3.0),
                lambda: ShiftedSampler(shift=0), lambda: make_sampler("cosmap")):
        with pytest.raises(ValueError):
            bad()


# ---- conventions ---------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0])
@given(levels=st.lists(st.floats(0, 1), min_size=1, max_size=16))
@settings(max_examples=30, deadline=None)
def test_diffusers_convention_round_trips_through_real_scheduler(shift, levels):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    conv = get_convention("diffusers_sd3", shift=shift)
    out = conv.from_noise_level(torch.tensor(levels))
    # the script's own code: indices = (u * 1000).long(); timesteps = scheduler.timesteps[indices]
    indices = (out.u * 1000).long()
    torch.testing.assert_close(sched.timesteps[indices], out.timesteps, atol=1e-3, rtol=0)
    torch.testing.assert_close(sched.sigmas[indices], out.noise_level, atol=1e-6, rtol=0)
    # snapping moves a level by at most one grid step
    grid = conv.grid()
    step = max(float((grid[:-1] - grid[1:]).max()), float(grid[-1]))  # the table stops at 1/N, not 0
    assert (out.noise_level - torch.tensor(levels)).abs().max() <= step + 1e-6
    assert torch.equal(conv.noise_level_from_draw(out.u), out.noise_level)


def test_diffusers_direction_small_u_is_noisy():
    sched = FlowMatchEulerDiscreteScheduler()
    u = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.999])
    sigma = sched.sigmas[(u * 1000).long()]
    assert bool((sigma[:-1] > sigma[1:]).all()) and sigma[0] == 1.0  # u = 0: pure noise
    conv = TimestepConvention.from_scheduler(sched)
    torch.testing.assert_close(conv.noise_level_from_draw(u), sigma)
    out = conv.from_noise_level(torch.tensor([1.0, 0.75, 0.25, 0.0]))
    assert bool((out.u[:-1] < out.u[1:]).all())  # noisier level -> smaller u
    assert out.u[0] < 0.001 and out.u[-1] > 0.999


def test_model_inputs_per_trainer():
    levels = torch.tensor([1.0, 0.5, 0.25])
    flux = get_convention("diffusers_flux").from_noise_level(levels)
    sd3 = get_convention("diffusers_sd3").from_noise_level(levels)
    sana = get_convention("diffusers_sana").from_noise_level(levels)
    torch.testing.assert_close(flux.model_input, flux.timesteps / 1000)  # FLUX script: timestep / 1000
    torch.testing.assert_close(sd3.model_input, sd3.timesteps)  # SD3 / Sana: raw value
    torch.testing.assert_close(sana.model_input, sana.timesteps)
    torch.testing.assert_close(flux.timesteps, torch.tensor([1000.0, 500.0, 250.0]))
    for name in ("kohya_flux", "simpletuner", "sigma"):
        out = get_convention(name).from_noise_level(torch.tensor([0.3337]))
        assert out.u is None
        torch.testing.assert_close(out.noise_level, torch.tensor([0.3337]))  # sigmas used directly
        torch.testing.assert_close(out.timesteps, torch.tensor([333.7]))
    torch.testing.assert_close(get_convention("kohya_flux").from_noise_level(levels).model_input, levels)


def test_flux_scheduler_config_keeps_unshifted_training_table():
    # FLUX's scheduler config sets shift=3 with dynamic shifting: the training table is unshifted
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    conv = TimestepConvention.from_scheduler(sched, model_scale=1e-3)
    assert conv.shift == 1.0
    torch.testing.assert_close(conv.grid(), CONVENTIONS["diffusers_flux"].grid(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kwargs", [dict(weighting_scheme="logit_normal", logit_mean=0.8, logit_std=1.0),
               dict(weighting_scheme="logit_normal", logit_mean=-0.5, logit_std=0.7),
               dict(weighting_scheme="mode", mode_scale=1.29),
               dict(weighting_scheme="none")],
    ids=lambda k: "-".join(map(str, k.values())),
)
def test_sampler_from_diffusers_args_matches_the_scripts_noise_levels(kwargs):
    """What the DreamBooth scripts actually train on, drawn with diffusers' own code."""
    sched = FlowMatchEulerDiscreteScheduler()
    torch.manual_seed(0)
    full = dict(logit_mean=0.0, logit_std=1.0, mode_scale=1.29) | kwargs
    u = compute_density_for_timestep_sampling(batch_size=N, **full)
    script_levels = sched.sigmas[(u * 1000).long().clamp(max=999)].double().numpy()
    ours = _draw(sampler_from_diffusers_args(**kwargs), seed=1)
    assert stats.ks_2samp(script_levels, ours).pvalue > ALPHA
    if kwargs.get("logit_mean", 0) != 0:  # the naive reading (no flip) must be rejected
        naive = _draw(LogitNormalSampler(kwargs["logit_mean"], kwargs["logit_std"]), seed=2)
        assert stats.ks_2samp(script_levels, naive).pvalue < 1e-6


def test_sampler_from_kohya_args():
    assert sampler_from_kohya_args("sigmoid", sigmoid_scale=2.0) == SigmoidSampler(2.0)
    shifted = sampler_from_kohya_args("shift", discrete_flow_shift=3.1582)
    assert shifted == ShiftedSampler(SigmoidSampler(1.0), 3.1582)
    flux = sampler_from_kohya_args("flux_shift", image_size=(512, 512))
    assert flux.shift == pytest.approx(resolution_shift(1024))
    assert sampler_from_kohya_args("sigma", weighting_scheme="logit_normal", logit_mean=1.0).mean == -1.0
    with pytest.raises(ValueError, match="image_size"):
        sampler_from_kohya_args("flux_shift")


def test_convention_rejects_out_of_range_levels():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        get_convention("sigma").from_noise_level([1.5])
    with pytest.raises(ValueError, match="unknown timestep convention"):
        get_convention("onetrainer")
    with pytest.raises(ValueError, match="no draw"):
        get_convention("kohya_flux").noise_level_from_draw([0.5])
