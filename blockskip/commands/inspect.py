"""`blockskip inspect`: a model's block layout and what a plan would do to it."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser("inspect", help="print a model's block layout and what a plan does to it")
    parser.add_argument(
        "--config",
        default="demo",
        help="a transformer config.json, its folder, or a pipeline folder; 'demo' for the demo model",
    )
    parser.add_argument("--plan", help="a plan file to apply (nothing is loaded or changed)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..shapes import build_shapes_dit
    from ..skipping.inspection import describe, model_from_config
    from ..skipping.plan import BlockSkipPlan

    model = build_shapes_dit() if args.config == "demo" else model_from_config(args.config)
    plan = BlockSkipPlan.load(args.plan) if args.plan else None
    print(describe(model, plan))
    return 0
