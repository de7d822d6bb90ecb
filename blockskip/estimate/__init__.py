"""Memory and FLOPs of a training step at full size without a GPU, measured peaks, and the planner.

Imports `training` and the layers below it. The calibration and the plot are imported from their
modules (`blockskip.estimate.calibration`, `blockskip.estimate.plot`), not from here.
"""

from .gpus import GPUS, GpuProfile, UnknownGpuError, get_gpu
from .memory import MemoryUsage, format_bytes, measure_peak_memory
from .planner import NoPlanFitsError, PlanChoice, plan_for_budget
from .report import StepEstimate, TrainingEstimate, describe_step
from .step import estimate_step
from .step_time import StepTime, format_seconds, step_time
from .training_memory import estimate_training_memory

__all__ = [
    "GPUS",
    "GpuProfile",
    "MemoryUsage",
    "NoPlanFitsError",
    "PlanChoice",
    "StepEstimate",
    "StepTime",
    "TrainingEstimate",
    "UnknownGpuError",
    "describe_step",
    "estimate_step",
    "estimate_training_memory",
    "format_bytes",
    "format_seconds",
    "get_gpu",
    "measure_peak_memory",
    "plan_for_budget",
    "step_time",
]
