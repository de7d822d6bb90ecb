"""The method itself: the plan, the skip tables, swapping skipped blocks for residual stand-ins, LoRA
on what is kept, and the memory trades for the kept blocks.

Imports `residuals`, `families` and `crops`.
"""

from .lora import lora_target_modules, save_lora
from .plan import BlockSkipPlan, BlockSkipPlanError
from .skip import BlockSkipError, BlockSkipHandle, SkippedBlock, apply_block_skip, get_block_skip, remove_block_skip
from .skip_table import SkipSplit, SkipTable, get_skip_table, register_skip_table, resolve_ratio
from .trades import MemoryTrades, apply_memory_trades, get_memory_trades

__all__ = [
    "BlockSkipError",
    "BlockSkipHandle",
    "BlockSkipPlan",
    "BlockSkipPlanError",
    "MemoryTrades",
    "SkipSplit",
    "SkipTable",
    "SkippedBlock",
    "apply_block_skip",
    "apply_memory_trades",
    "get_block_skip",
    "get_memory_trades",
    "get_skip_table",
    "lora_target_modules",
    "register_skip_table",
    "remove_block_skip",
    "resolve_ratio",
    "save_lora",
]
