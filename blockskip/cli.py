"""The `blockskip` command. Each subcommand lives in `blockskip/commands/<name>.py`.

    blockskip demo [--steps 30] [--plan plan.json] [--out blockskip-demo]
    blockskip inspect --config path/to/transformer [--plan plan.json]
    blockskip select --pipeline DIR --lora DIR --prompts FILE --ratio 0.3 -o plan.json
    blockskip precompute --pipeline DIR --images DIR --plan plan.json --steps N --batch-size B
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .skipping.plan import BlockSkipPlanError

COMMANDS = ("demo", "inspect", "precompute", "select", "estimate", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockskip", description="DiT-BlockSkip for the LoRA trainers you already use.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"blockskip.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (BlockSkipPlanError, FileNotFoundError, ValueError, LookupError) as error:
        print(f"blockskip {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
