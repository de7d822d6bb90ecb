"""`python -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN [kohya arguments]`.

The adapter's own flags may stand anywhere on the line; they are taken out before the script's
parser sees the rest:

- `--blockskip_plan PLAN` (required): a plan file, or a folder holding `blockskip_plan.json`.
- `--blockskip_patches {dynamic,off}`: timestep-aware dynamic patches (default) or none.
- `--blockskip_quiet`: no `[blockskip]` lines on stderr.

Example:
    >>> split_arguments(["flux_train_network.py", "--blockskip_plan=p.json", "--network_dim", "16"])
    AdapterArguments(script='flux_train_network.py', plan='p.json', dynamic_patches=True, quiet=False, script_args=['--network_dim', '16'], ralu=None)
"""

from __future__ import annotations

from ..flags import AdapterArguments, split_script_arguments
from ..main import run_main
from .errors import KohyaAdapterError

USAGE = """usage: python -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN
                                             [--blockskip_patches {dynamic,off}] [--blockskip_quiet] [KOHYA ARGUMENTS ...]
       accelerate launch -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN [KOHYA ARGUMENTS ...]

Runs kohya sd-scripts' FLUX LoRA trainer (flux_train_network.py, from an sd-scripts checkout)
with DiT-BlockSkip: the plan's leading and trailing blocks are skipped (LoRA only on the kept
blocks, saved with the full model's key names), and with dynamic patches each image is cropped at
a size set by its noise level and trained at the plan's patches.min_size. Pass --resolution equal
to the plan's patches.max_size and --network_module networks.lora_flux (or
blockskip.integrations.kohya.lora_flux). See docs/trainers/kohya.md."""


def split_arguments(argv: list[str]) -> AdapterArguments:
    """Take the adapter's flags out of `argv`; the rest is the script and its arguments."""
    return split_script_arguments(
        argv, KohyaAdapterError, "name the training script first: the path of sd-scripts' flux_train_network.py",
        ("plan", "patches", "ralu"),
    )


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, USAGE, _start, KohyaAdapterError)


def _start(argv: list[str]) -> None:
    from .runner import run_training

    split_arguments(argv).run_with(run_training)
