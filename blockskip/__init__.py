"""blockskip: DiT-BlockSkip for the LoRA trainers you already use.

Skip the leading and trailing transformer blocks of a diffusion transformer during LoRA
fine-tuning, replace them with residuals, and train only the middle.

Example:
    >>> from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip
    >>> plan = BlockSkipPlan.from_dict({"skip": {"ratio": 0.3}})
"""

from .collator import DynamicPatchCollator, LatentPatchCollator
from .conventions import get_convention
from .image_folder import ImageFolder
from .images import ImageLoadError
from .layouts import BlockIO, UnknownLayoutError, get_layout, register_block_io, register_model_layout
from .lora import lora_target_modules, save_lora
from .masking import TextAttentionMask, mask_text_attention
from .memory import MemoryUsage, measure_peak_memory
from .patches import PatchSchedule
from .pipeline_inputs import PipelineInputs
from .plan import BlockSkipPlan, BlockSkipPlanError
from .prompt_cache import PromptCache
from .residuals.bank import BankError
from .residuals.precompute import precompute_residuals
from .schedule import TrainingSchedule
from .selection import SelectionProfile, best_skip, select_blocks
from .skip import BlockSkipError, BlockSkipHandle, SkippedBlock, apply_block_skip, get_block_skip, remove_block_skip
from .timesteps import LogitNormalSampler, UniformSampler

__version__ = "0.1.0"

__all__ = [
    "BankError",
    "BlockIO",
    "BlockSkipError",
    "BlockSkipHandle",
    "BlockSkipPlan",
    "BlockSkipPlanError",
    "DynamicPatchCollator",
    "ImageFolder",
    "ImageLoadError",
    "LatentPatchCollator",
    "LogitNormalSampler",
    "MemoryUsage",
    "PatchSchedule",
    "PipelineInputs",
    "PromptCache",
    "SelectionProfile",
    "SkippedBlock",
    "TextAttentionMask",
    "TrainingSchedule",
    "UniformSampler",
    "UnknownLayoutError",
    "apply_block_skip",
    "best_skip",
    "get_block_skip",
    "get_convention",
    "get_layout",
    "lora_target_modules",
    "mask_text_attention",
    "measure_peak_memory",
    "precompute_residuals",
    "register_block_io",
    "register_model_layout",
    "remove_block_skip",
    "select_blocks",
    "save_lora",
]
