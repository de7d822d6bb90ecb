"""Adapter for kohya-ss sd-scripts' FLUX LoRA trainer (`flux_train_network.py`).

    accelerate launch -m blockskip.integrations.kohya /path/to/sd-scripts/flux_train_network.py \\
        --blockskip_plan plan.json --network_module networks.lora_flux --resolution 512 ...

The script's own `FluxNetworkTrainer` runs, subclassed at run time (`trainer`):

- its BFL-layout `library.flux_models.Flux` (`layout`: `DoubleStreamBlock` returns `(img, txt)`,
  `SingleStreamBlock` runs on the joint `cat(txt, img)` sequence) gets `apply_block_skip` right
  after loading;
- `--network_module` is `blockskip.integrations.kohya.lora_flux` (`networks.lora_flux` is
  replaced by it): kohya's own LoRA, restricted to the kept blocks, saved with the full model's
  keys (`lora_unet_double_blocks_N_...`) plus the plan (`guard`);
- each training batch is cropped at its samples' noise levels (`crops`, `density`) and noised
  at those levels (`noise`); with `--cache_latents` the latents are cropped;
- flags that cannot work are refused before any model loads (`checks`).

Nothing in sd-scripts is changed on disk or left patched. Docs: docs/trainers/kohya.md. In Python:

    >>> from blockskip.integrations.kohya import split_arguments
    >>> split_arguments(["flux_train_network.py", "--blockskip_plan", "plan.json", "--network_dim", "16"]).script_args
    ['--network_dim', '16']
"""

from .command import AdapterArguments, main, split_arguments
from .errors import KohyaAdapterError
from .layout import kohya_plan, register_kohya_flux
from .runner import describe, run_training
from .session import KohyaSession

__all__ = [
    "AdapterArguments",
    "KohyaAdapterError",
    "KohyaSession",
    "describe",
    "kohya_plan",
    "main",
    "register_kohya_flux",
    "run_training",
    "split_arguments",
]
