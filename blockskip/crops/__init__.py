"""Timestep-dependent crops: crop sizes, timestep samplers, trainer conventions, and the collators.

The bottom layer, beside `families`: nothing here imports another blockskip subpackage.
"""

from .collator import DynamicPatchCollator, LatentPatchCollator
from .conventions import get_convention
from .image_folder import ImageFolder
from .images import ImageLoadError
from .patches import PatchSchedule
from .timesteps import LogitNormalSampler, UniformSampler

__all__ = [
    "DynamicPatchCollator",
    "ImageFolder",
    "ImageLoadError",
    "LatentPatchCollator",
    "LogitNormalSampler",
    "PatchSchedule",
    "UniformSampler",
    "get_convention",
]
