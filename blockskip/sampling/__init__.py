"""Faster sampling without retraining: Region-Adaptive Latent Upsampling (RALU, arXiv 2507.08422)
for diffusers FLUX and SD3 pipelines and the shapes DiT (see docs/ralu.md)."""

from .mixed_tokens import MixedLayout
from .run import RALURun
from .schedule import stage_sigmas, transition
from .settings import RALUSettings, RALUSettingsError

__all__ = ["MixedLayout", "RALURun", "RALUSettings", "RALUSettingsError", "stage_sigmas", "transition"]
