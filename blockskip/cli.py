"""The `blockskip` command. Each subcommand lives in `blockskip/commands/<name>.py`.

    blockskip demo [--steps 150] [--plan plan.json] [-o blockskip-demo]
    blockskip inspect --config path/to/transformer [--plan plan.json]
    blockskip select --pipeline DIR --lora DIR --prompts FILE --ratio 0.3 -o plan.json
    blockskip precompute --pipeline DIR --images DIR --plan plan.json --steps N --batch-size B
    blockskip estimate --model flux.1-dev [--skip-ratio 0.5] [--gpu rtx4090-24gb] [--compare]
    blockskip plan --model flux.1-dev --gpu rtx4090-24gb [--prefer speed|memory|quality] -o plan.json
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .residuals.bank import BankError
from .selection.masking import MaskingError
from .skipping.plan import BlockSkipPlanError
from .skipping.skip import BlockSkipError

COMMANDS = ("demo", "inspect", "precompute", "select", "estimate", "plan")
# What a user can cause and fix: one line each. Anything else is a bug and keeps its traceback.
USER_ERRORS = (BlockSkipPlanError, BankError, BlockSkipError, MaskingError, ValueError, LookupError, OSError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line that points to --help instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="blockskip", description="DiT-BlockSkip for the LoRA trainers you already use.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"blockskip.commands.{name}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"blockskip {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
