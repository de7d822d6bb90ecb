"""`blockskip demo`: full LoRA vs BlockSkip vs naive skip on the embedded default model."""

from __future__ import annotations

import argparse


def register(commands) -> None:
    parser = commands.add_parser("demo", help="train full LoRA, BlockSkip and naive skip on a small FLUX-type model")
    parser.add_argument("--model", default="flux-tiny", choices=["flux-tiny"], help="the embedded default model")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument("--plan", help="a plan file (default: skip ratio 0.5, online residuals)")
    parser.add_argument("--out", default="blockskip-demo", help="folder for the saved LoRA and plan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..plan import BlockSkipPlan

    plan = BlockSkipPlan.load(args.plan) if args.plan else None
    run_demo(steps=args.steps, plan=plan, out=args.out, seed=args.seed, rank=args.rank)
    return 0
