"""Running the method: one LoRA training step, residual precompute, prompt caching, the transformer's
inputs from a diffusers pipeline, and a flow-matching sampler.

Imports `skipping` and the layers below it.
"""

from .pipeline_inputs import PipelineInputs
from .precompute import precompute_residuals
from .prompt_cache import PromptCache
from .sampling import EulerSampler
from .training_step import TrainingSetup, run_step

__all__ = ["EulerSampler", "PipelineInputs", "PromptCache", "TrainingSetup", "precompute_residuals", "run_step"]
