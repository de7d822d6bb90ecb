"""`python -m blockskip.integrations.simpletuner --blockskip_plan PLAN [SimpleTuner options]`.

The adapter's own flags may stand anywhere on the line; they are taken out before SimpleTuner
sees its options (its parser rejects unknown ones):

- `--blockskip_plan PLAN` (required): a plan file, or a folder holding `blockskip_plan.json`.
- `--blockskip_config FILE`: SimpleTuner's own config file (`config.json`, `.toml` or `.env`),
  found the way `simpletuner train` finds it (`CONFIG_BACKEND` and `CONFIG_PATH`).
- `--blockskip_patches {dynamic,off}`: timestep-aware crops of the cached latents (default), or
  none (train at the cached resolution with block skipping only).
- `--blockskip_quiet`: no `[blockskip]` lines on stderr.
- `--blockskip_ralu {4x,7x,SETTINGS.json}`: validation images are sampled with RALU
  (Region-Adaptive Latent Upsampling, docs/ralu.md).

Everything else is SimpleTuner's own options (`--model_family flux --output_dir ...`), parsed by
SimpleTuner's command-line backend. With neither options nor `--blockskip_config`, SimpleTuner
finds its configuration itself (`config/config.json`, `ENV=...`).

Example:
    >>> split_arguments(["--blockskip_plan=p.json", "--model_family", "flux", "--blockskip_patches", "off"])
    AdapterArguments(plan='p.json', config=None, dynamic_patches=False, quiet=False, trainer_args=['--model_family', 'flux'], ralu=None)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..flags import plan_and_patches, take_flags
from ..main import run_main
from .errors import SimpleTunerAdapterError

BACKENDS = {".json": "json", ".toml": "toml", ".env": "env"}
USAGE = """usage: python -m blockskip.integrations.simpletuner --blockskip_plan PLAN [--blockskip_config FILE]
                                                [--blockskip_patches {dynamic,off}] [--blockskip_ralu {4x,7x,SETTINGS.json}] [--blockskip_quiet]
                                                [SIMPLETUNER OPTIONS ...]
       accelerate launch -m blockskip.integrations.simpletuner --blockskip_plan PLAN [SIMPLETUNER OPTIONS ...]

Runs SimpleTuner's own training (Trainer(...).run(), in this process) with DiT-BlockSkip: the plan's
leading and trailing transformer blocks are skipped (LoRA only on the kept blocks), and each cached
latent is cropped at a size set by its noise level and trained at the plan's patches.min_size.
Give SimpleTuner's options on the line, or its config file with --blockskip_config.
See docs/trainers/simpletuner.md."""


@dataclass
class AdapterArguments:
    plan: str
    config: str | None = None
    dynamic_patches: bool = True
    quiet: bool = False
    trainer_args: list[str] = field(default_factory=list)
    ralu: str | None = None


def split_arguments(argv: list[str]) -> AdapterArguments:
    """Take the adapter's flags out of `argv`; the rest is SimpleTuner's options."""
    values, rest = take_flags(argv, ("plan", "config", "patches", "ralu"), SimpleTunerAdapterError)
    plan, dynamic_patches, quiet = plan_and_patches(values, SimpleTunerAdapterError)
    config = values.get("config")
    if config is not None and rest:
        raise SimpleTunerAdapterError(
            f"give SimpleTuner's options either in --blockskip_config {config} or on the command line, not both "
            f"(SimpleTuner's file backends ignore the command line): {' '.join(rest)}"
        )
    if config is not None and Path(str(config)).suffix not in BACKENDS:
        raise SimpleTunerAdapterError(f"--blockskip_config {config}: SimpleTuner reads .json, .toml or .env files")
    ralu = values.get("ralu")
    return AdapterArguments(plan, config, dynamic_patches, quiet, rest, str(ralu) if ralu is not None else None)


@contextmanager
def config_source(arguments: AdapterArguments) -> Iterator[None]:
    """Point SimpleTuner's config loader at the file or the options given (as `simpletuner train` does)."""
    saved_env = {name: os.environ.get(name) for name in ("CONFIG_BACKEND", "CONFIG_PATH")}
    saved_argv = sys.argv[:]
    try:
        if arguments.config is not None:
            path = Path(arguments.config).resolve()
            if not path.is_file():
                raise SimpleTunerAdapterError(f"--blockskip_config {arguments.config}: no such file")
            os.environ["CONFIG_BACKEND"] = BACKENDS[path.suffix]
            os.environ["CONFIG_PATH"] = str(path.with_suffix(""))
        elif arguments.trainer_args:
            os.environ["CONFIG_BACKEND"] = "cmd"
            sys.argv = [sys.argv[0], *arguments.trainer_args]
        yield
    finally:
        sys.argv[:] = saved_argv
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, USAGE, _start, SimpleTunerAdapterError)


def _start(argv: list[str]) -> None:
    from .runner import run_training  # imports SimpleTuner; keep --help fast

    arguments = split_arguments(argv)
    with config_source(arguments):
        run_training(None, arguments.plan, dynamic_patches=arguments.dynamic_patches, verbose=not arguments.quiet,
                     ralu=arguments.ralu)
