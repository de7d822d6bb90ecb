"""The model families the diffusers DreamBooth-LoRA scripts train, as the adapter needs them.

Each script loads one transformer class with `from_pretrained(..., subfolder="transformer")`,
saves with its pipeline class's `save_lora_weights`, and feeds the transformer `timestep=` in
its own scale (FLUX: `timesteps / 1000`; SD3 and Sana: raw).

Example:
    >>> family_for_class("FluxTransformer2DModel").pipeline_class
    'FluxPipeline'
    >>> [family.script for family in FAMILIES]
    ['train_dreambooth_lora_flux.py', 'train_dreambooth_lora_sd3.py', 'train_dreambooth_lora_sana.py']
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScriptFamily:
    """One upstream script: which classes it uses and its timestep convention (`blockskip.crops.conventions`)."""

    script: str
    transformer_class: str
    pipeline_class: str
    convention: str
    model_scale: float

    def transformer_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.transformer_class)

    def pipeline_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class)


FAMILIES: tuple[ScriptFamily, ...] = (
    ScriptFamily("train_dreambooth_lora_flux.py", "FluxTransformer2DModel", "FluxPipeline", "diffusers_flux", 1e-3),
    ScriptFamily("train_dreambooth_lora_sd3.py", "SD3Transformer2DModel", "StableDiffusion3Pipeline", "diffusers_sd3", 1.0),
    ScriptFamily("train_dreambooth_lora_sana.py", "SanaTransformer2DModel", "SanaPipeline", "diffusers_sana", 1.0),
)


def family_for_class(class_name: str) -> ScriptFamily | None:
    """The family whose transformer class is `class_name`, or None."""
    return next((family for family in FAMILIES if family.transformer_class == class_name), None)
