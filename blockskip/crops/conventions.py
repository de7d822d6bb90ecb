"""Trainer timestep conventions: a noise level as each trainer's loop and transformer see it.

The same noise level ``sigma`` in ``[0, 1]`` (1 = pure noise, as the samplers in
:mod:`blockskip.crops.timesteps` draw it) is a different ``timesteps`` value and transformer
``timestep=`` input in each trainer: the diffusers DreamBooth scripts index a descending scheduler
table with a draw ``u`` (so levels snap to that table), kohya and SimpleTuner use sigmas directly,
and FLUX's transformer takes ``timesteps / 1000`` where SD3's and Sana's take the raw value.
:data:`CONVENTIONS` names each trainer's convention; :meth:`TimestepConvention.from_noise_level`
translates.

Example:
    >>> import torch
    >>> from blockskip.crops.conventions import get_convention
    >>> out = get_convention("diffusers_flux").from_noise_level(torch.tensor([0.25, 1.0]))
    >>> out.timesteps.tolist(), out.model_input.tolist()
    ([250.0, 1000.0], [0.25, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "TrainerTimesteps",
    "TimestepConvention",
    "get_convention",
    "CONVENTIONS",
]


@dataclass(frozen=True)
class TrainerTimesteps:
    """Noise levels expressed in one trainer's convention (all tensors of shape ``(B,)``).

    - ``noise_level``: sigma actually used (snapped to the scheduler grid for discrete trainers).
    - ``timesteps``: the trainer's ``timesteps`` variable (``num_train_timesteps`` = pure noise).
    - ``model_input``: the value the trainer passes as the transformer's ``timestep=``.
    - ``u``: discrete trainers only: a draw for which ``(u * N).long()`` indexes
      ``scheduler.timesteps`` at exactly ``timesteps`` (what a patched
      ``compute_density_for_timestep_sampling`` should return). ``None`` otherwise.
    """

    noise_level: torch.Tensor
    timesteps: torch.Tensor
    model_input: torch.Tensor
    u: torch.Tensor | None = None


@dataclass(frozen=True)
class TimestepConvention:
    """How a trainer turns a draw into timesteps, and what its transformer receives.

    ``discrete=True`` means the diffusers-script path: ``timesteps = scheduler.timesteps[(u*N).long()]``
    on a table running from ``N`` down; noise levels snap to that table's sigmas (``shift`` is the
    scheduler's own static shift; ``from_scheduler`` reads it from a real scheduler).
    ``model_scale`` multiplies ``timesteps`` into the transformer input (FLUX: 1/1000).

    >>> conv = get_convention("diffusers_sd3")
    >>> out = conv.from_noise_level(torch.tensor([1.0, 0.0]))
    >>> [round(u, 4) for u in out.u.tolist()], out.model_input.tolist()
    ([0.0005, 0.9995], [1000.0, 1.0])
    """

    name: str
    discrete: bool = False
    model_scale: float = 1.0
    num_train_timesteps: int = 1000
    shift: float = 1.0
    sigma_table: tuple[float, ...] | None = None

    @classmethod
    def from_scheduler(cls, scheduler: Any, name: str = "diffusers", model_scale: float = 1.0):
        """Discrete convention on a real ``FlowMatchEulerDiscreteScheduler``'s training table."""
        n = int(scheduler.config.num_train_timesteps)
        sigmas = (scheduler.timesteps.double() / n).tolist()
        dynamic = bool(getattr(scheduler.config, "use_dynamic_shifting", False))
        shift = 1.0 if dynamic else float(getattr(scheduler.config, "shift", 1.0))  # the table's own shift
        return cls(name, True, model_scale, n, shift, tuple(sigmas))

    def grid(self) -> torch.Tensor:
        """Descending sigma table of a discrete trainer (index ``i`` = ``u`` in ``[i/N, (i+1)/N)``)."""
        if self.sigma_table is not None:
            return torch.tensor(self.sigma_table, dtype=torch.float64)
        n = self.num_train_timesteps
        s = torch.arange(n, 0, -1, dtype=torch.float64) / n
        return self.shift * s / (1.0 + (self.shift - 1.0) * s)

    def from_noise_level(self, noise_level: Any) -> TrainerTimesteps:
        sigma = torch.as_tensor(noise_level, dtype=torch.float64).reshape(-1)
        if ((sigma < 0) | (sigma > 1) | sigma.isnan()).any():
            raise ValueError(f"noise levels must lie in [0, 1], got {sigma.tolist()}")
        u = None
        if self.discrete:
            grid = self.grid()
            n = grid.numel()
            ascending = grid.flip(0)
            pos = torch.searchsorted(ascending, sigma).clamp(1, n - 1)
            nearer_low = (sigma - ascending[pos - 1]) <= (ascending[pos] - sigma)
            pos = torch.where(nearer_low, pos - 1, pos)
            index = (n - 1) - pos
            sigma = grid[index]
            u = ((index.double() + 0.5) / n).float()  # mid-bin: (u * N).long() == index
        timesteps = sigma * self.num_train_timesteps
        return TrainerTimesteps(
            noise_level=sigma.float(),
            timesteps=timesteps.float(),
            model_input=(timesteps * self.model_scale).float(),
            u=u,
        )

    def noise_level_from_draw(self, u: Any) -> torch.Tensor:
        """Discrete trainers: the noise level their own code gives a draw ``u`` in ``[0, 1)``."""
        if not self.discrete:
            raise ValueError(f"convention {self.name!r} uses sigmas directly; there is no draw u")
        grid = self.grid()
        index = (torch.as_tensor(u, dtype=torch.float32) * grid.numel()).long().clamp(0, grid.numel() - 1)
        return grid[index].float()


CONVENTIONS: dict[str, TimestepConvention] = {
    # diffusers examples/dreambooth/train_dreambooth_lora_{flux,sd3,sana}.py
    "diffusers_flux": TimestepConvention("diffusers_flux", discrete=True, model_scale=1e-3),
    "diffusers_sd3": TimestepConvention("diffusers_sd3", discrete=True, model_scale=1.0),
    "diffusers_sana": TimestepConvention("diffusers_sana", discrete=True, model_scale=1.0),
    # kohya sd-scripts flux_train_network.py (uniform/sigmoid/shift/flux_shift paths)
    "kohya_flux": TimestepConvention("kohya_flux", discrete=False, model_scale=1e-3),
    # SimpleTuner sample_flow_sigmas: (sigmas, sigmas * 1000); its model classes rescale
    "simpletuner": TimestepConvention("simpletuner", discrete=False, model_scale=1.0),
    # plain sigma, e.g. a hand-written loop
    "sigma": TimestepConvention("sigma", discrete=False, model_scale=1e-3),
}


def get_convention(name: str | TimestepConvention, **overrides: Any) -> TimestepConvention:
    """Look up a named convention (see :data:`CONVENTIONS`); keyword arguments replace fields.

    >>> get_convention("diffusers_sd3", shift=3.0).shift
    3.0
    """
    if isinstance(name, TimestepConvention):
        conv = name
    elif name in CONVENTIONS:
        conv = CONVENTIONS[name]
    else:
        raise ValueError(f"unknown timestep convention {name!r}; choose one of {', '.join(CONVENTIONS)}")
    if overrides:
        conv = TimestepConvention(**{**conv.__dict__, **overrides})
    return conv
