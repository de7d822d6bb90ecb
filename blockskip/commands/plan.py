"""`blockskip plan`: the fastest (or smallest, or lowest-risk) plan that fits a GPU, written to plan.json."""

from __future__ import annotations

import argparse
import json

from .arguments import fraction, int_list, non_negative_gib, output_file, positive_gib
from .estimate import add_step_arguments, step_options


def register(commands) -> None:
    parser = commands.add_parser("plan", help="find the fastest plan that fits a GPU or a VRAM budget")
    add_step_arguments(parser)
    parser.add_argument("--budget-gib", type=positive_gib, help="GPU memory available for training, GiB (default: the --gpu profile's)")
    parser.add_argument(
        "--prefer",
        default="speed",
        choices=["speed", "memory", "quality"],
        help="speed: the least modelled s/step (default); memory: the smallest peak; quality: the lowest-risk plan that fits",
    )
    parser.add_argument(
        "--min-quality",
        default="fp8",
        choices=["lossless", "bf16", "fp8"],
        help="lossless: only checkpointing/offload; bf16: also skipping and lower resolution; fp8: also fp8 weights (default)",
    )
    parser.add_argument("--max-skip-ratio", type=fraction, default=0.5, help="largest skip ratio to consider (default 0.5)")
    parser.add_argument("--resolutions", type=int_list, help="training sides to try, best first, comma-separated (default: the preset's)")
    parser.add_argument("--no-offload", action="store_true", help="never offload kept weights (no per-step PCIe traffic)")
    parser.add_argument("--reserve-gib", type=non_negative_gib, default=0.5, help="kept free for the CUDA context (default 0.5)")
    parser.add_argument("-o", "--out", type=output_file, default="plan.json", help="where to write the plan (default plan.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..estimate import TrainingEstimate
    from ..estimate.planner import GIB, plan_for_budget

    if args.budget_gib is None and args.gpu is None:
        raise ValueError("give --gpu (its memory is the budget) or --budget-gib")
    options = step_options(args)
    choice = plan_for_budget(
        args.model,
        int(args.budget_gib * GIB) if args.budget_gib is not None else None,
        gpu=args.gpu,
        prefer=args.prefer,
        min_quality=args.min_quality,
        max_skip_ratio=args.max_skip_ratio,
        resolutions=args.resolutions,
        allow_offload=not args.no_offload,
        reserve_bytes=int(args.reserve_gib * GIB),
        residuals=args.residuals or "online",
        **options,
    )
    path = choice.plan.save(args.out)
    if args.json:
        print(json.dumps({**choice.to_dict(), "written_to": str(path)}, indent=2))
        return 0
    report = TrainingEstimate(choice.model, choice.estimate.model_parameters, choice.estimate, choice.baseline, gpu=choice.gpu)
    print(report.format_table())
    print()
    print(choice.explain())
    print(f"plan written to {path}")
    return 0
