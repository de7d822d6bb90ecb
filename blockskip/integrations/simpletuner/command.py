"""`python -m blockskip.integrations.simpletuner --blockskip_plan PLAN [SimpleTuner options]`.

The adapter's own flags may stand anywhere on the line; they are taken out before SimpleTuner
sees its options (its parser rejects unknown ones):

- `--blockskip_plan PLAN` (required): a plan file, or a folder holding `blockskip_plan.json`.
- `--blockskip_config FILE`: SimpleTuner's own config file (`config.json`, `.toml` or `.env`),
  found the way `simpletuner train` finds it (`CONFIG_BACKEND` and `CONFIG_PATH`).
- `--blockskip_patches {dynamic,off}`: timestep-aware crops of the cached latents (default), or
  none (train at the cached resolution with block skipping only).
- `--blockskip_quiet`: no `[blockskip]` lines on stderr.

Everything else is SimpleTuner's own options (`--model_family flux --output_dir ...`), parsed by
SimpleTuner's command-line backend. With neither options nor `--blockskip_config`, SimpleTuner
finds its configuration itself (`config/config.json`, `ENV=...`).

Example:
    >>> split_arguments(["--blockskip_plan=p.json", "--model_family", "flux", "--blockskip_patches", "off"])
    AdapterArguments(plan='p.json', config=None, dynamic_patches=False, quiet=False, trainer_args=['--model_family', 'flux'])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ...plan import BlockSkipPlanError
from ...skip import BlockSkipError
from .errors import SimpleTunerAdapterError

PREFIX = "--blockskip_"
BACKENDS = {".json": "json", ".toml": "toml", ".env": "env"}
USAGE = """usage: python -m blockskip.integrations.simpletuner --blockskip_plan PLAN [--blockskip_config FILE]
                                                [--blockskip_patches {dynamic,off}] [--blockskip_quiet]
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


def split_arguments(argv: list[str]) -> AdapterArguments:
    """Take the adapter's flags out of `argv`; the rest is SimpleTuner's options."""
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
        if name not in ("plan", "config", "patches"):
            raise SimpleTunerAdapterError(
                f"unknown blockskip flag {item.split('=')[0]} (known: --blockskip_plan, --blockskip_config, "
                "--blockskip_patches, --blockskip_quiet)"
            )
        if not has_value:
            value = next(items, None)
            if value is None or value.startswith("--"):
                raise SimpleTunerAdapterError(f"{PREFIX}{name} needs a value")
        values[name] = value
    if "plan" not in values:
        raise SimpleTunerAdapterError("--blockskip_plan PLAN is required (a plan file, see docs/plan.md)")
    patches = values.get("patches", "dynamic")
    if patches not in ("dynamic", "off"):
        raise SimpleTunerAdapterError(f"--blockskip_patches must be dynamic or off, not {patches!r}")
    config = values.get("config")
    if config is not None and rest:
        raise SimpleTunerAdapterError(
            f"give SimpleTuner's options either in --blockskip_config {config} or on the command line, not both "
            f"(SimpleTuner's file backends ignore the command line): {' '.join(rest)}"
        )
    if config is not None and Path(str(config)).suffix not in BACKENDS:
        raise SimpleTunerAdapterError(f"--blockskip_config {config}: SimpleTuner reads .json, .toml or .env files")
    return AdapterArguments(str(values["plan"]), config, patches == "dynamic", bool(values.get("quiet")), rest)


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
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    from .runner import run_training  # imports SimpleTuner; keep --help fast

    try:
        arguments = split_arguments(argv)
        with config_source(arguments):
            run_training(None, arguments.plan, dynamic_patches=arguments.dynamic_patches, verbose=not arguments.quiet)
    except (SimpleTunerAdapterError, BlockSkipPlanError, BlockSkipError) as error:
        print(f"blockskip: error: {error}", file=sys.stderr)
        return 2
    return 0
