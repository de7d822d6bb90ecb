"""Stand-in for SimpleTuner's own FLUX pipeline copy: diffusers' `FluxPipeline` (its LoRA saving is what matters)."""

from diffusers import FluxPipeline as _DiffusersFluxPipeline


class FluxPipeline(_DiffusersFluxPipeline):
    pass
