"""Timestep samplers: densities over noise levels, and the ones the trainers' flags draw.

Everything here speaks in **noise levels**: ``sigma`` in ``[0, 1]`` with ``1`` = pure noise, the
rectified-flow mixing weight of ``x_t = (1 - sigma) * x_0 + sigma * noise``. That is the ``t/T``
of the DiT-BlockSkip crop schedule. A sampler draws noise levels; a
:class:`~blockskip.crops.conventions.TimestepConvention` (:mod:`blockskip.crops.conventions`) turns them into
what a given trainer feeds its loop and its transformer.

The trap this module exists for: the diffusers DreamBooth scripts draw ``u`` from a density,
then take ``scheduler.timesteps[(u * 1000).long()]``, and ``FlowMatchEulerDiscreteScheduler``
stores its timesteps from 1000 *down*. A small ``u`` is therefore a *noisy* sample, and
``--logit_mean m`` in those scripts means a logit-normal of mean ``-m`` over noise levels.
:func:`sampler_from_diffusers_args` does that translation.

Example:
    >>> import torch
    >>> from blockskip.crops.timesteps import LogitNormalSampler, sampler_from_diffusers_args
    >>> levels = LogitNormalSampler().sample(4, generator=torch.Generator().manual_seed(0))
    >>> levels.shape, bool(((levels > 0) & (levels < 1)).all())
    (torch.Size([4]), True)
    >>> sampler_from_diffusers_args("logit_normal", logit_mean=0.8)  # a script's --logit_mean 0.8
    LogitNormalSampler(mean=-0.8, std=1.0)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "TimestepSampler",
    "UniformSampler",
    "LogitNormalSampler",
    "SigmoidSampler",
    "ModeSampler",
    "ShiftedSampler",
    "partial_uniform",
    "resolution_shift",
    "make_sampler",
    "sampler_from_diffusers_args",
    "sampler_from_kohya_args",
]


def _as_float_array(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(np.asarray(z, dtype=np.float64))).numpy()


def _logit(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(x) - np.log1p(-x)


class TimestepSampler(ABC):
    """A distribution over noise levels in ``[0, 1]`` (1 = pure noise).

    ``sample(n, generator)`` draws a float32 tensor of shape ``(n,)``; ``cdf(x)`` is the exact
    cumulative distribution function (used by the tests and by anyone who wants to check a
    trainer against it).
    """

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    @abstractmethod
    def cdf(self, x: Any) -> np.ndarray: ...

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.sample(n, generator)


@dataclass(frozen=True)
class UniformSampler(TimestepSampler):
    """Uniform noise levels on ``[low, high)``; ``UniformSampler(0.5, 0.9)`` is ZOODiP's PUTS.

    >>> UniformSampler(0.5, 0.9).cdf([0.5, 0.7, 0.9]).round(3).tolist()
    [0.0, 0.5, 1.0]
    """

    low: float = 0.0
    high: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"UniformSampler needs 0 <= low < high <= 1, got low={self.low}, high={self.high}")

    def sample(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return (self.low + (self.high - self.low) * u).float()

    def cdf(self, x):
        return np.clip((_as_float_array(x) - self.low) / (self.high - self.low), 0.0, 1.0)


def partial_uniform(low: float = 0.5, high: float = 0.9) -> UniformSampler:
    """ZOODiP's partial uniform timestep sampling: timesteps uniform on ``[500, 900)``."""
    return UniformSampler(low, high)


@dataclass(frozen=True)
class LogitNormalSampler(TimestepSampler):
    """``sigmoid(N(mean, std))`` over noise levels (SD3 paper): ``mean > 0`` favours noisy samples.

    >>> float(LogitNormalSampler(0.0, 1.0).cdf(0.5))
    0.5
    """

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if not self.std > 0:
            raise ValueError(f"LogitNormalSampler needs std > 0, got {self.std}")

    def sample(self, n, generator=None):
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.sigmoid(self.mean + self.std * z).float()

    def cdf(self, x):
        return _normal_cdf((_logit(_as_float_array(x)) - self.mean) / self.std)


@dataclass(frozen=True)
class SigmoidSampler(TimestepSampler):
    """``sigmoid(scale * N(0, 1))`` over noise levels (kohya's ``sigmoid``; x-flux).

    >>> SigmoidSampler(1.0).sample(3, torch.Generator().manual_seed(0)).shape
    torch.Size([3])
    """

    scale: float = 1.0

    def __post_init__(self):
        if not self.scale > 0:
            raise ValueError(f"SigmoidSampler needs scale > 0, got {self.scale}")

    def sample(self, n, generator=None):
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return torch.sigmoid(self.scale * z).float()

    def cdf(self, x):
        return _normal_cdf(_logit(_as_float_array(x)) / self.scale)


@dataclass(frozen=True)
class ModeSampler(TimestepSampler):
    """SD3's "mode" density: ``t = 1 - u - scale * (cos^2(pi u / 2) - 1 + u)`` for uniform ``u``.

    The map is symmetric about 1/2 (``f(1 - u) = 1 - f(u)``), so the density is the same whether
    read as noise level or as its complement. ``scale`` must lie in ``[-1, 2 / (pi - 2)]`` for the
    map to stay monotone; ``scale = 0`` is uniform, ``1.29`` is the SD3 paper's choice.

    >>> round(float(ModeSampler(1.29).cdf(0.5)), 6)
    0.5
    """

    scale: float = 1.29

    def __post_init__(self):
        if not -1.0 <= self.scale <= 2.0 / (math.pi - 2.0):
            raise ValueError(f"ModeSampler needs -1 <= scale <= 2/(pi-2) ~ 1.752, got {self.scale}")

    def _map(self, u):
        lib = torch if torch.is_tensor(u) else np
        return 1.0 - u - self.scale * (lib.cos(math.pi * u / 2.0) ** 2 - 1.0 + u)

    def sample(self, n, generator=None):
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return self._map(u).clamp(0.0, 1.0).float()

    def cdf(self, x):
        # f is decreasing, so P(f(U) <= x) = 1 - f^{-1}(x); invert by bisection (60 halvings).
        x = np.clip(_as_float_array(x), 0.0, 1.0)
        lo, hi = np.zeros_like(x), np.ones_like(x)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self._map(mid) > x
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        return 1.0 - 0.5 * (lo + hi)


def resolution_shift(
    image_seq_len: int,
    *,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
) -> float:
    """FLUX's resolution-dependent shift ``exp(mu)``, ``mu`` linear in the image token count.

    ``mu`` goes from ``base_shift`` at ``base_seq_len`` tokens to ``max_shift`` at ``max_seq_len``
    (FLUX.1 defaults; a 256² image on FLUX has (256/16)² = 256 tokens).

    >>> round(resolution_shift(256), 4) == round(math.exp(0.5), 4)
    True
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return math.exp(base_shift + slope * (image_seq_len - base_seq_len))


@dataclass(frozen=True)
class ShiftedSampler(TimestepSampler):
    """A base density pushed through ``x -> shift * x / (1 + (shift - 1) * x)`` (SD3/FLUX shift).

    ``shift > 1`` moves mass toward noisy samples. :meth:`for_resolution` picks FLUX's
    resolution-dependent shift.

    >>> s = ShiftedSampler(UniformSampler(), shift=3.0)
    >>> round(float(s.cdf(0.75)), 6)  # 0.75 = shift(0.5)
    0.5
    """

    base: TimestepSampler = field(default_factory=UniformSampler)
    shift: float = 1.0

    def __post_init__(self):
        if not self.shift > 0:
            raise ValueError(f"ShiftedSampler needs shift > 0, got {self.shift}")

    @classmethod
    def for_resolution(
        cls,
        base: TimestepSampler,
        height: int,
        width: int,
        *,
        pixels_per_token: int = 16,
        **shift_kwargs: float,
    ) -> "ShiftedSampler":
        """FLUX-style: ``shift = resolution_shift((height / 16) * (width / 16))``."""
        seq_len = (height // pixels_per_token) * (width // pixels_per_token)
        return cls(base, resolution_shift(seq_len, **shift_kwargs))

    def apply(self, x):
        return self.shift * x / (1.0 + (self.shift - 1.0) * x)

    def sample(self, n, generator=None):
        return self.apply(self.base.sample(n, generator).double()).clamp(0.0, 1.0).float()

    def cdf(self, x):
        x = np.clip(_as_float_array(x), 0.0, 1.0)
        return self.base.cdf(x / (self.shift - (self.shift - 1.0) * x))


_SAMPLERS = {
    "uniform": UniformSampler,
    "partial_uniform": partial_uniform,
    "puts": partial_uniform,
    "logit_normal": LogitNormalSampler,
    "sigmoid": SigmoidSampler,
    "mode": ModeSampler,
}


def make_sampler(name: str, *, shift: float | None = None, **kwargs: Any) -> TimestepSampler:
    """Build a sampler by name: ``uniform``, ``partial_uniform`` (``puts``), ``logit_normal``,
    ``sigmoid``, ``mode``; ``shift=`` wraps it in a :class:`ShiftedSampler`.

    >>> make_sampler("logit_normal", mean=0.0, std=1.0, shift=3.0).shift
    3.0
    """
    if name not in _SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; choose one of {', '.join(sorted(_SAMPLERS))}")
    sampler = _SAMPLERS[name](**kwargs)
    return sampler if shift is None or shift == 1.0 else ShiftedSampler(sampler, shift)


def sampler_from_diffusers_args(
    weighting_scheme: str = "none",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> TimestepSampler:
    """The noise-level density a diffusers DreamBooth script draws for these arguments.

    The scripts' ``u`` indexes a descending timestep table, so noise level ~ ``1 - u``: a
    logit-normal of mean ``m`` over ``u`` is one of mean ``-m`` over noise levels. (The scheduler
    table's own shift, e.g. SD3's 3.0, comes on top; wrap in :class:`ShiftedSampler` for it.)

    >>> sampler_from_diffusers_args("logit_normal", logit_mean=0.8).mean
    -0.8
    """
    if weighting_scheme == "logit_normal":
        return LogitNormalSampler(-logit_mean, logit_std)
    if weighting_scheme == "mode":
        return ModeSampler(mode_scale)
    return UniformSampler()


def sampler_from_kohya_args(
    timestep_sampling: str = "sigma",
    *,
    sigmoid_scale: float = 1.0,
    discrete_flow_shift: float = 3.0,
    image_size: tuple[int, int] | None = None,
    **diffusers_args: Any,
) -> TimestepSampler:
    """The noise-level density of kohya sd-scripts' FLUX ``--timestep_sampling`` (sigmas direct).

    ``flux_shift`` needs ``image_size=(height, width)`` in pixels. Other values (``sigma``) go
    through the diffusers-style weighting scheme: see :func:`sampler_from_diffusers_args`.
    """
    if timestep_sampling == "uniform":
        return UniformSampler()
    if timestep_sampling == "sigmoid":
        return SigmoidSampler(sigmoid_scale)
    if timestep_sampling == "shift":
        return ShiftedSampler(SigmoidSampler(sigmoid_scale), discrete_flow_shift)
    if timestep_sampling == "flux_shift":
        if image_size is None:
            raise ValueError("timestep_sampling='flux_shift' needs image_size=(height, width)")
        return ShiftedSampler.for_resolution(SigmoidSampler(sigmoid_scale), *image_size)
    return sampler_from_diffusers_args(**diffusers_args)
