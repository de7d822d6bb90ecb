"""blockskip: DiT-BlockSkip for the LoRA trainers you already use.

Skip the leading and trailing transformer blocks of a diffusion transformer during LoRA
fine-tuning, replace them with residuals, and train only the middle.

Example:
    >>> from blockskip import BlockSkipPlan, apply_block_skip, remove_block_skip
    >>> plan = BlockSkipPlan.from_dict({"skip": {"ratio": 0.3}})
"""

from .crops.collator import DynamicPatchCollator, LatentPatchCollator
from .crops.conventions import get_convention
from .crops.image_folder import ImageFolder
from .crops.images import ImageLoadError
from .crops.patches import PatchSchedule
from .crops.timesteps import LogitNormalSampler, UniformSampler
from .estimate import TrainingEstimate, estimate_training_memory
from .estimate.memory import MemoryUsage, measure_peak_memory
from .estimate.planner import plan_for_budget
from .families.layouts import BlockIO, UnknownLayoutError, get_layout, register_block_io, register_model_layout
from .families.presets import PRESETS, get_preset
from .residuals.bank import BankError
from .residuals.schedule import TrainingSchedule
from .selection.masking import TextAttentionMask, mask_text_attention
from .selection.select import SelectionProfile, best_skip, select_blocks
from .skipping.lora import lora_target_modules, save_lora
from .skipping.plan import BlockSkipPlan, BlockSkipPlanError
from .skipping.skip import BlockSkipError, BlockSkipHandle, SkippedBlock, apply_block_skip, get_block_skip, remove_block_skip
from .skipping.trades import MemoryTrades, apply_memory_trades, get_memory_trades
from .training.pipeline_inputs import PipelineInputs
from .training.precompute import precompute_residuals
from .training.prompt_cache import PromptCache
from .version import __version__

__all__ = [
    "apply_block_skip",
    "apply_memory_trades",
    "BankError",
    "best_skip",
    "BlockIO",
    "BlockSkipError",
    "BlockSkipHandle",
    "BlockSkipPlan",
    "BlockSkipPlanError",
    "DynamicPatchCollator",
    "estimate_training_memory",
    "get_block_skip",
    "get_convention",
    "get_layout",
    "get_memory_trades",
    "get_preset",
    "ImageFolder",
    "ImageLoadError",
    "LatentPatchCollator",
    "LogitNormalSampler",
    "lora_target_modules",
    "mask_text_attention",
    "measure_peak_memory",
    "MemoryTrades",
    "MemoryUsage",
    "PatchSchedule",
    "PipelineInputs",
    "plan_for_budget",
    "precompute_residuals",
    "PRESETS",
    "PromptCache",
    "register_block_io",
    "register_model_layout",
    "remove_block_skip",
    "save_lora",
    "select_blocks",
    "SelectionProfile",
    "SkippedBlock",
    "TextAttentionMask",
    "TrainingEstimate",
    "TrainingSchedule",
    "UniformSampler",
    "UnknownLayoutError",
]
