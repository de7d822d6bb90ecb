"""The `blockskip` command.

    blockskip demo [--steps 30] [--plan plan.json] [--out blockskip-demo]
    blockskip inspect --config path/to/transformer [--plan plan.json]
"""

from __future__ import annotations

import argparse
import sys

from .plan import BlockSkipPlan, BlockSkipPlanError


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    plan = BlockSkipPlan.load(args.plan) if args.plan else None
    run_demo(steps=args.steps, plan=plan, out=args.out, seed=args.seed, rank=args.rank)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .demo_data import build_demo_model
    from .inspection import describe, model_from_config

    model = build_demo_model() if args.config == "demo" else model_from_config(args.config)
    plan = BlockSkipPlan.load(args.plan) if args.plan else None
    print(describe(model, plan))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blockskip", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="train full LoRA, BlockSkip and naive skip on a small FLUX-type model")
    demo.add_argument("--model", default="flux-tiny", choices=["flux-tiny"], help="the embedded default model")
    demo.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    demo.add_argument("--plan", help="a plan file (default: skip ratio 0.5, online residuals)")
    demo.add_argument("--out", default="blockskip-demo", help="folder for the saved LoRA and plan")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    demo.set_defaults(run=_demo)

    inspect = commands.add_parser("inspect", help="print a model's block layout and what a plan does to it")
    inspect.add_argument(
        "--config",
        default="demo",
        help="a transformer config.json, its folder, or a pipeline folder; 'demo' for the demo model",
    )
    inspect.add_argument("--plan", help="a plan file to apply (nothing is loaded or changed)")
    inspect.set_defaults(run=_inspect)
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
