"""A flow-matching Euler sampler for a bare transformer: latents in, latents out.

The selection probe compares generations with and without masking. When only the transformer is
at hand (no VAE, no text encoders, no scheduler), this sampler integrates the model's velocity
from pure noise (σ = 1) to σ = 0:

    x_{σ'} = x_σ + (σ' − σ) · v(x_σ, σ),    x_σ = (1 − σ) · x_0 + σ · ε,    v = ε − x_0

with `steps` Euler steps on `σ_i = 1 − i/steps`, optionally shifted as SD3/FLUX schedulers do
(`σ ↦ shift·σ / (1 + (shift − 1)·σ)`). Every input is kept as given except the latents and the
timestep, so conditioning (text features, pooled projections, guidance, position ids) comes from
the caller. No classifier-free guidance: the probe compares two runs of the same sampler, so it
only needs to be deterministic, not to match a pipeline image for image.

Timesteps are `σ · timestep_scale`. The scale depends on the model class: FLUX, FLUX.2, Chroma,
QwenImage and AuraFlow take σ itself (they multiply by 1000 inside); SD3, Sana, Wan, HunyuanVideo
and LTX take σ · 1000.

Example:
    >>> import torch
    >>> from diffusers import SanaTransformer2DModel
    >>> model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
    ...     attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
    ...     cross_attention_dim=16, caption_channels=8, sample_size=4, patch_size=1).eval()
    >>> inputs = {"hidden_states": torch.randn(1, 4, 4, 4), "encoder_hidden_states": torch.randn(1, 5, 8)}
    >>> sampler = EulerSampler(steps=4)
    >>> sampler.sigmas().tolist()
    [1.0, 0.75, 0.5, 0.25, 0.0]
    >>> sampler.sample(model, inputs).shape
    torch.Size([1, 4, 4, 4])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# Model classes whose forward takes the timestep in [0, 1] (they scale it by 1000 themselves).
UNIT_TIMESTEP_MODELS = frozenset(
    {
        "FluxTransformer2DModel",
        "Flux2Transformer2DModel",
        "ChromaTransformer2DModel",
        "QwenImageTransformer2DModel",
        "AuraFlowTransformer2DModel",
    }
)
# Model classes this sampler does not drive correctly without help.
_NOT_FLOW_MATCHING = {
    "CogVideoXTransformer3DModel": "CogVideoX is a v-prediction model sampled with DDIM, not flow matching",
    "Lumina2Transformer2DModel": "Lumina2 takes 1 - t as its timestep",
}


def timestep_scale_for(model: nn.Module) -> float:
    """1.0 for models that take σ ∈ [0, 1] as their timestep, 1000.0 for those that take σ · 1000."""
    name = type(model).__name__
    if name in _NOT_FLOW_MATCHING:
        raise ValueError(
            f"the Euler sampler cannot drive {name}: {_NOT_FLOW_MATCHING[name]}; "
            "probe it through its diffusers pipeline instead"
        )
    return 1.0 if name in UNIT_TIMESTEP_MODELS else 1000.0


def model_output(result: Any) -> torch.Tensor:
    """The main tensor of a diffusers transformer's return value (tuple or output dataclass)."""
    if isinstance(result, torch.Tensor):
        return result
    if isinstance(result, (tuple, list)):
        return result[0]
    return result.sample


@dataclass(frozen=True)
class EulerSampler:
    """Flow-matching Euler sampling of a bare transformer (see the module docstring).

    `timestep_scale=None` picks the scale from the model class (`timestep_scale_for`).
    `latent_arg` and `timestep_arg` name the forward arguments that carry the latents and the
    timestep.
    """

    steps: int = 8
    shift: float = 1.0
    timestep_scale: float | None = None
    latent_arg: str = "hidden_states"
    timestep_arg: str = "timestep"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps: {self.steps} must be >= 1")
        if self.shift <= 0:
            raise ValueError(f"shift: {self.shift} must be > 0")

    def sigmas(self) -> torch.Tensor:
        """The `steps + 1` noise levels, from 1 down to 0 (float64)."""
        sigmas = torch.linspace(1.0, 0.0, self.steps + 1, dtype=torch.float64)
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    @torch.no_grad()
    def sample(self, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        """Denoise `inputs[latent_arg]` (pure noise) with `model`; returns the final latents."""
        if self.latent_arg not in inputs:
            raise KeyError(f"the sampler's inputs have no {self.latent_arg!r} (the starting noise)")
        scale = self.timestep_scale if self.timestep_scale is not None else timestep_scale_for(model)
        latents = inputs[self.latent_arg]
        conditioning = {k: v for k, v in inputs.items() if k not in (self.latent_arg, self.timestep_arg)}
        conditioning["return_dict"] = False
        sigmas = self.sigmas().tolist()
        for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
            timestep = torch.full((latents.shape[0],), sigma * scale, dtype=latents.dtype, device=latents.device)
            arguments = {self.latent_arg: latents, self.timestep_arg: timestep, **conditioning}
            velocity = model_output(model(**arguments))
            if velocity.shape != latents.shape:
                raise ValueError(
                    f"{type(model).__name__} returned shape {tuple(velocity.shape)} for latents of shape "
                    f"{tuple(latents.shape)}; the Euler sampler needs a velocity of the latents' shape"
                )
            latents = latents + (next_sigma - sigma) * velocity.to(latents.dtype)
        return latents
