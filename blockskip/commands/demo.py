"""`blockskip demo`: personalize the pretrained shapes DiT with full LoRA, BlockSkip and naive skip."""

from __future__ import annotations

import argparse

from .arguments import non_negative_int, positive_int


def register(commands) -> None:
    parser = commands.add_parser("demo", help="personalize a small pretrained FLUX-type model: full LoRA vs BlockSkip vs naive skip")
    parser.add_argument("--model", default="shapes-dit", choices=["shapes-dit"], help="the embedded default model")
    parser.add_argument("--steps", type=positive_int, default=150, help="training steps per run (default 150)")
    parser.add_argument("--plan", help="a plan file (default: skip ratio 0.3, online residuals)")
    parser.add_argument("-o", "--out", default="blockskip-demo", help="folder for the samples and the BlockSkip LoRA with its plan")
    parser.add_argument("--work-dir", help="keep the other skipping runs' LoRA (and bank, when cached) here; by default they are removed")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--rank", type=positive_int, default=8, help="LoRA rank (default 8)")
    parser.add_argument("--subject", type=int, default=0, choices=range(10), help="which held-out subject (0-9)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..shapes.demo import run_demo
    from ..skipping.plan import BlockSkipPlan

    plan = BlockSkipPlan.load(args.plan) if args.plan else None
    run_demo(steps=args.steps, plan=plan, out=args.out, seed=args.seed, rank=args.rank, subject=args.subject, work_dir=args.work_dir)
    return 0
