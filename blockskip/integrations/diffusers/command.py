"""`python -m blockskip.integrations.diffusers SCRIPT --blockskip_plan PLAN [script arguments]`.

The adapter's own flags may stand anywhere on the line; they are taken out before the script
sees its arguments (the scripts use a plain `parse_args()`, which rejects unknown flags):

- `--blockskip_plan PLAN` (required): a plan file, or a folder holding `blockskip_plan.json`.
- `--blockskip_patches {dynamic,off}`: timestep-aware dynamic patches (default) or none
  (train at `--resolution` with block skipping only; needed for `--cache_latents`).
- `--blockskip_quiet`: no `[blockskip]` lines on stderr.
- `--blockskip_ralu {4x,7x,SETTINGS.json}`: validation images are sampled with RALU
  (Region-Adaptive Latent Upsampling; FLUX and SD3 scripts; see docs/ralu.md).

Everything else, in order, is the script path and the script's own arguments.

Example:
    >>> split_arguments(["train.py", "--blockskip_plan=p.json", "--rank", "16", "--blockskip_patches", "off"])
    AdapterArguments(script='train.py', plan='p.json', dynamic_patches=False, quiet=False, script_args=['--rank', '16'], ralu=None)
"""

from __future__ import annotations

from ..flags import AdapterArguments, split_script_arguments
from ..main import run_main
from .errors import ScriptAdapterError

USAGE = """usage: python -m blockskip.integrations.diffusers SCRIPT --blockskip_plan PLAN [--blockskip_patches {dynamic,off}]
                                                [--blockskip_ralu {4x,7x,SETTINGS.json}] [--blockskip_quiet] [SCRIPT ARGUMENTS ...]
       accelerate launch -m blockskip.integrations.diffusers SCRIPT --blockskip_plan PLAN [SCRIPT ARGUMENTS ...]

Runs a diffusers DreamBooth-LoRA training script (train_dreambooth_lora_{flux,sd3,sana}.py) with
DiT-BlockSkip: the plan's leading and trailing transformer blocks are skipped (LoRA only on the
kept blocks), and with dynamic patches each image is cropped at a size set by its noise level and
trained at the plan's patches.min_size. Pass --resolution equal to the plan's patches.max_size.
See docs/trainers/diffusers.md."""


def split_arguments(argv: list[str]) -> AdapterArguments:
    """Take the adapter's flags out of `argv`; the rest is the script and its arguments."""
    return split_script_arguments(
        argv, ScriptAdapterError, "name the training script first, e.g. train_dreambooth_lora_flux.py", ("plan", "patches", "ralu")
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, USAGE, _start, ScriptAdapterError)


def _start(argv: list[str]) -> None:
    from .runner import run_script  # imports diffusers; keep --help fast

    split_arguments(argv).run_with(run_script)
