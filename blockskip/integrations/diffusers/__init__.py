"""Adapter for the diffusers DreamBooth-LoRA example scripts (`train_dreambooth_lora_{flux,sd3,sana}.py`).

    python -m blockskip.integrations.diffusers train_dreambooth_lora_flux.py --blockskip_plan plan.json \\
        --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --resolution 512 ...

The script runs unmodified as `__main__`; for the duration of the run the adapter patches

- the transformer classes' `from_pretrained` (`loading`): the script's transformer gets
  `apply_block_skip` right after loading, so its own `add_adapter` puts LoRA only on kept blocks;
- `DataLoader.__init__` (`data`): the DreamBooth data loader collates through a
  `DynamicPatchCollator` (crop at `s(t)`, train at `patches.min_size`);
- `diffusers.training_utils.compute_density_for_timestep_sampling` (`density`): the loop's `u` is
  the batch's `timestep_u`, so every sample is noised at the level its crop was made for;
- the pipeline classes' `save_lora_weights` (`saving`): `blockskip_plan.json` beside every LoRA;
- `argparse.ArgumentParser.parse_args` (`arguments`): incompatible flags fail before loading.

Docs: docs/trainers/diffusers.md. In Python:

    >>> from blockskip.integrations.diffusers import split_arguments
    >>> split_arguments(["train_dreambooth_lora_flux.py", "--blockskip_plan", "plan.json", "--rank", "16"]).script_args
    ['--rank', '16']
"""

from .command import AdapterArguments, main, split_arguments
from .errors import ScriptAdapterError
from .families import FAMILIES, ScriptFamily
from .runner import describe, run_script

__all__ = [
    "FAMILIES",
    "AdapterArguments",
    "ScriptAdapterError",
    "ScriptFamily",
    "describe",
    "main",
    "run_script",
    "split_arguments",
]
