"""Adapter for SimpleTuner 4.x (`pip install simpletuner`; FLUX): train with its own `Trainer`, in this process.

    accelerate launch -m blockskip.integrations.simpletuner --blockskip_plan plan.json \\
        --model_family flux --model_type lora --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev ...

SimpleTuner's `Trainer(config=...).run()` runs unmodified; for the duration of the run the adapter
wraps four methods of the trainer's model family object (`Flux`), as instance attributes:

- `load_model` (`loading`): the transformer SimpleTuner just loaded gets `apply_block_skip` before
  quantization, LoRA and the move to the GPU; its joint-sequence single blocks are registered;
- `get_lora_target_layers` (`targets`): LoRA only on kept blocks, under their original indices;
- `prepare_batch` (`batches`): noise level first (SimpleTuner's own sampler), then a
  `LatentPatchCollator` crop of the cached latents at `s(t)`, then SimpleTuner's own noising;
- `save_lora_weights` (`saving`): `blockskip_plan.json` beside every LoRA.

Options that cannot work (TREAD, DiffusionBlocks, musubi block swap, RamTorch, ...) are refused
right after SimpleTuner parses its config, before any model loads (`checks`). `simpletuner train`
starts training in a subprocess that these patches cannot reach: use this module as the entry
point instead. Docs: docs/trainers/simpletuner.md. Every module imports without SimpleTuner.

    >>> from blockskip.integrations.simpletuner import split_arguments
    >>> split_arguments(["--blockskip_plan", "plan.json", "--model_family", "flux"]).trainer_args
    ['--model_family', 'flux']
"""

from .checks import check_config, check_plan
from .command import AdapterArguments, main, split_arguments
from .errors import SimpleTunerAdapterError
from .families import FAMILIES, TrainerFamily, family_for, register_trainer_blocks
from .runner import describe, run_training
from .targets import kept_block_targets

__all__ = [
    "FAMILIES",
    "AdapterArguments",
    "SimpleTunerAdapterError",
    "TrainerFamily",
    "check_config",
    "check_plan",
    "describe",
    "family_for",
    "kept_block_targets",
    "main",
    "register_trainer_blocks",
    "run_training",
    "split_arguments",
]
