"""`python -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN [kohya arguments]`.

The adapter's own flags may stand anywhere on the line; they are taken out before the script's
parser sees the rest:

- `--blockskip_plan PLAN` (required): a plan file, or a folder holding `blockskip_plan.json`.
- `--blockskip_patches {dynamic,off}`: timestep-aware dynamic patches (default) or none.
- `--blockskip_quiet`: no `[blockskip]` lines on stderr.

Example:
    >>> split_arguments(["flux_train_network.py", "--blockskip_plan=p.json", "--network_dim", "16"])
    AdapterArguments(script='flux_train_network.py', plan='p.json', dynamic_patches=True, quiet=False, script_args=['--network_dim', '16'])
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ...plan import BlockSkipPlanError
from ...skip import BlockSkipError
from .errors import KohyaAdapterError

PREFIX = "--blockskip_"
USAGE = """usage: python -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN
                                             [--blockskip_patches {dynamic,off}] [--blockskip_quiet] [KOHYA ARGUMENTS ...]
       accelerate launch -m blockskip.integrations.kohya flux_train_network.py --blockskip_plan PLAN [KOHYA ARGUMENTS ...]

Runs kohya sd-scripts' FLUX LoRA trainer (flux_train_network.py, from an sd-scripts checkout)
with DiT-BlockSkip: the plan's leading and trailing blocks are skipped (LoRA only on the kept
blocks, saved with the full model's key names), and with dynamic patches each image is cropped at
a size set by its noise level and trained at the plan's patches.min_size. Pass --resolution equal
to the plan's patches.max_size and --network_module networks.lora_flux (or
blockskip.integrations.kohya.lora_flux). See docs/trainers/kohya.md."""


@dataclass
class AdapterArguments:
    script: str
    plan: str
    dynamic_patches: bool = True
    quiet: bool = False
    script_args: list[str] = field(default_factory=list)


def split_arguments(argv: list[str]) -> AdapterArguments:
    """Take the adapter's flags out of `argv`; the rest is the script and its arguments."""
    values: dict[str, str | bool] = {}
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if not item.startswith(PREFIX):
            rest.append(item)
            continue
        name, has_value, value = item[len(PREFIX):].partition("=")
        if name == "quiet":
            values[name] = True
            continue
        if name not in ("plan", "patches"):
            raise KohyaAdapterError(f"unknown blockskip flag {item.split('=')[0]} (known: --blockskip_plan, "
                                    "--blockskip_patches, --blockskip_quiet)")
        if not has_value:
            value = next(items, None)
            if value is None or value.startswith("--"):
                raise KohyaAdapterError(f"{PREFIX}{name} needs a value")
        values[name] = value
    if not rest or rest[0].startswith("-"):
        raise KohyaAdapterError("name the training script first: the path of sd-scripts' flux_train_network.py")
    if "plan" not in values:
        raise KohyaAdapterError("--blockskip_plan PLAN is required (a plan file, see docs/plan.md)")
    patches = values.get("patches", "dynamic")
    if patches not in ("dynamic", "off"):
        raise KohyaAdapterError(f"--blockskip_patches must be dynamic or off, not {patches!r}")
    return AdapterArguments(rest[0], str(values["plan"]), patches == "dynamic", bool(values.get("quiet")), rest[1:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from .runner import run_training

    try:
        arguments = split_arguments(argv)
        run_training(
            arguments.script,
            arguments.script_args,
            arguments.plan,
            dynamic_patches=arguments.dynamic_patches,
            verbose=not arguments.quiet,
        )
    except (KohyaAdapterError, BlockSkipPlanError, BlockSkipError) as error:
        print(f"blockskip: error: {error}", file=sys.stderr)
        return 2
    return 0
