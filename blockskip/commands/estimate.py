"""`blockskip estimate`: peak memory and FLOPs of a LoRA training step at full size, no GPU needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..estimate.gpus import GPUS
from .arguments import fraction, gib_list, output_file, positive_int, share_list


def add_step_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with `blockskip plan`: the model and what one training step looks like."""
    parser.add_argument("--model", required=True, help="a preset (flux.1-dev, sd3.5-large, ...), a config.json, or a model folder")
    parser.add_argument("--frames", type=positive_int, help="frames per sample, video models (default: the preset's)")
    parser.add_argument("--text-length", type=positive_int, help="text tokens (default: the model's training scripts')")
    parser.add_argument("--batch-size", type=positive_int, default=1)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--lora-rank", type=positive_int, default=4)
    parser.add_argument("--lora-targets", default="to_q,to_k,to_v,to_out.0", help="comma-separated layer suffixes")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit", "sgd"])
    parser.add_argument("--residuals", choices=["online", "cached"], help="price online or cached residuals (default: the plan's)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="the device the step runs on (cpu: no weight streaming)")
    parser.add_argument("--gpu", choices=list(GPUS), metavar="GPU", help=f"a GPU profile, adds modelled s/step: {', '.join(GPUS)}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

def register(commands) -> None:
    parser = commands.add_parser("estimate", help="estimate a training step's peak memory and FLOPs without a GPU")
    add_step_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--plan", help="a plan file")
    source.add_argument(
        "--skip-ratio", type=fraction, default=0.3, help="skip this fraction of the blocks, split by the model's table (default 0.3)"
    )
    parser.add_argument("--resolution", type=positive_int, help="training side in pixels (default: the plan's patches.min_size)")
    parser.add_argument("--baseline-resolution", type=positive_int, help="the baseline's side (default: patches.max_size)")
    parser.add_argument("--lora-dtype", choices=["bfloat16", "float16", "float32"], help="LoRA weights' dtype (default: the model's)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, help="override the plan")
    parser.add_argument("--storage-dtype", choices=["none", "float8_e4m3fn", "float8_e5m2"], help="kept blocks' weight storage (override the plan)")
    parser.add_argument("--group-offload", action=argparse.BooleanOptionalAction, help="override the plan")
    parser.add_argument("--zeroth-order", action="store_true",
                        help="price the plan's step as a forward-only zeroth-order step (blockskip.zeroth_order); the baseline stays backprop")
    parser.add_argument("--zo-queries", type=positive_int, default=1, help="with --zeroth-order: directions per step")
    parser.add_argument("--zo-estimator", choices=["central", "forward"], default="central",
                        help="with --zeroth-order: two forwards per query, or one per query plus one")
    parser.add_argument("--zo-update", choices=["sgd", "adam"], default="sgd", help="with --zeroth-order: the update rule")

    parser.add_argument("--ralu", metavar="PRESET|JSON",
                        help="price sampling with RALU instead of a training step: a preset (4x, 7x) or a settings file (FLUX, SD3)")
    parser.add_argument("--ralu-reference-steps", type=positive_int, default=50,
                        help="with --ralu: the full-resolution step count to compare with (default 50)")
    parser.add_argument("--dynamic-target", type=share_list, metavar="λ[,λ...]",
                        help="price one forward with DyDiT gating (blockskip.dynamic) keeping each λ of the gated FLOPs, "
                             "instead of a training step")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unskipped baseline")
    parser.add_argument("--plot", type=output_file, metavar="PNG", help="also draw peak memory and TFLOPs against skip ratio")
    parser.add_argument("--compare", action="store_true",
                        help="price block swap, group/layer offload, fp8/nf4 base weights and BlockSkip plans side by side (needs --gpu)")
    parser.add_argument("--budgets", type=gib_list, help="with --compare: GiB budgets, comma-separated: the fastest fitting setting of each strategy per budget")
    parser.set_defaults(run=run)


def step_options(args: argparse.Namespace) -> dict:
    return dict(
        frames=args.frames,
        text_length=args.text_length,
        batch_size=args.batch_size,
        dtype=args.dtype,
        lora_rank=args.lora_rank,
        lora_targets=tuple(target.strip() for target in args.lora_targets.split(",") if target.strip()),
        optimizer=args.optimizer,
        device=args.device,
    )


def _default_plan(args: argparse.Namespace, preset) -> dict:
    plan: dict = {"skip": {"ratio": args.skip_ratio}}
    if preset is not None:
        plan["patches"] = {"min_size": preset.training_resolution, "max_size": preset.resolution}
    return plan


def load_plan_for_estimate(path: str):
    """A plan file as an estimate reads it: a cached plan may leave out its bank, since no bank is read."""
    from ..skipping.plan import PLAN_FILENAME, BlockSkipPlan, BlockSkipPlanError

    try:
        return BlockSkipPlan.load(path)
    except BlockSkipPlanError as error:
        if error.path != "residuals.bank":
            raise
    file = Path(path) / PLAN_FILENAME if Path(path).is_dir() else Path(path)
    data = json.loads(file.read_text(encoding="utf-8"))
    data["residuals"]["bank"] = "(not read by an estimate)"
    return BlockSkipPlan.from_dict(data)


def compare(args: argparse.Namespace) -> int:
    from ..estimate.peers import budget_markdown, compare_strategies, format_comparison

    if args.gpu is None:
        raise ValueError("--compare needs --gpu: the strategies are timed on a GPU profile")
    rows = compare_strategies(args.model, args.gpu, resolution=args.baseline_resolution, training_resolution=args.resolution,
                              text_length=args.text_length, frames=args.frames, batch_size=args.batch_size, dtype=args.dtype)
    budgets = list(args.budgets or ())
    if args.json:
        print(json.dumps({"model": args.model, "gpu": args.gpu, "strategies": [row.to_dict() for row in rows]}, indent=2))
        return 0
    print(format_comparison(rows, args.gpu))
    if budgets:
        print()
        print(budget_markdown(rows, budgets))
    return 0


def _zeroth_order(args: argparse.Namespace):
    from ..estimate.zeroth_order_step import ZerothOrderPricing

    if args.zeroth_order and (args.compare or args.plot):
        raise ValueError("--zeroth-order prices one plan's step; --compare already has zeroth-order rows and --plot sweeps backprop steps")
    if not args.zeroth_order:
        if (args.zo_queries, args.zo_estimator, args.zo_update) != (1, "central", "sgd"):
            raise ValueError("--zo-queries, --zo-estimator and --zo-update need --zeroth-order")
        return None
    return ZerothOrderPricing(queries=args.zo_queries, estimator=args.zo_estimator, update=args.zo_update)


def ralu_sampling(args: argparse.Namespace) -> int:
    from ..estimate.sampling_cost import estimate_ralu_sampling
    from ..sampling import RALUSettings

    if args.compare or args.plot or args.zeroth_order or args.plan:
        raise ValueError("--ralu prices sampling; it does not combine with --plan, --compare, --plot or --zeroth-order")
    side = args.resolution or 1024
    cost = estimate_ralu_sampling(args.model, RALUSettings.load(args.ralu), side, side, text_length=args.text_length)
    reference = args.ralu_reference_steps
    if args.json:
        print(json.dumps({"model": cost.model, "height": side, "width": side, "calls": cost.calls, "tokens": cost.tokens,
                          "flops_per_call": cost.flops_per_call, "flops": cost.flops,
                          "full_resolution_flops_per_call": cost.full_resolution_flops_per_call,
                          "ratio_same_calls": cost.ratio_to(cost.total_calls), "reference_steps": reference,
                          "ratio_reference": cost.ratio_to(reference)}, indent=2))
        return 0
    print(f"RALU sampling, {cost.model} at {side}×{side} (estimated: transformer FLOPs per guidance branch on fake tensors;"
          " VAE decoding and edge detection not counted)")
    print(f"{'stage':<7}{'calls':>6}{'image tokens':>14}{'TFLOPs/call':>13}")
    for stage, (calls, tokens, flops) in enumerate(zip(cost.calls, cost.tokens, cost.flops_per_call), start=1):
        print(f"{stage:<7}{calls:>6}{tokens:>14}{flops / 1e12:>13.2f}")
    print(f"{'total':<7}{cost.total_calls:>6}{'':>14}{cost.flops / 1e12:>13.1f}")
    for steps in dict.fromkeys([cost.total_calls, reference]):
        print(f"full resolution, {steps} calls: {steps * cost.full_resolution_flops_per_call / 1e12:.1f} TFLOPs -> "
              f"RALU needs {1 / cost.ratio_to(steps):.2f} of it ({cost.ratio_to(steps):.2f}x fewer FLOPs)")
    return 0


def dynamic_forward(args: argparse.Namespace) -> int:
    from ..estimate.sampling_cost import estimate_dynamic_forward

    if args.compare or args.plot or args.zeroth_order or args.plan or args.ralu:
        raise ValueError("--dynamic-target prices one forward; it does not combine with --plan, --compare, --plot, --zeroth-order or --ralu")
    side = args.resolution or 1024
    costs = [estimate_dynamic_forward(args.model, target, side, side, text_length=args.text_length, frames=args.frames)
             for target in args.dynamic_target]
    if args.json:
        print(json.dumps([{"model": cost.model, "height": side, "width": side, "frames": args.frames, "target": cost.target,
                           "flops": cost.flops, "gated_flops": cost.gated_flops, "dynamic_flops": cost.dynamic_flops,
                           "ratio": cost.ratio} for cost in costs], indent=2))
        return 0
    print(f"dynamic width and tokens, {costs[0].model} at {side}×{side} (estimated: one forward's transformer FLOPs on fake tensors; "
          f"the gates scale {costs[0].gated_flops / costs[0].flops:.0%} of them; gather overheads not counted)")
    print(f"{'λ':<6}{'TFLOPs':>9}{'of ungated':>12}{'fewer FLOPs':>13}")
    print(f"{'1.0':<6}{costs[0].flops / 1e12:>9.2f}{1.0:>12.2f}{1.0:>12.2f}x")
    for cost in costs:
        print(f"{cost.target:<6g}{cost.dynamic_flops / 1e12:>9.2f}{1 / cost.ratio:>12.2f}{cost.ratio:>12.2f}x")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..estimate import estimate_training_memory
    from ..families.presets import resolve_model

    if args.dynamic_target:
        return dynamic_forward(args)
    if args.ralu:
        return ralu_sampling(args)
    zeroth_order = _zeroth_order(args)  # refuses misused flags before any pricing
    if args.compare:
        return compare(args)

    _, preset, _ = resolve_model(args.model)
    plan = load_plan_for_estimate(args.plan) if args.plan else _default_plan(args, preset)
    report = estimate_training_memory(
        args.model,
        plan,
        resolution=args.resolution,
        baseline_resolution=args.baseline_resolution,
        lora_dtype=args.lora_dtype,
        gradient_checkpointing=args.gradient_checkpointing,
        storage_dtype=args.storage_dtype,
        group_offload=args.group_offload,
        residuals=args.residuals,
        baseline=not args.no_baseline,
        gpu=args.gpu,
        zeroth_order=zeroth_order,
        **step_options(args),
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.format_table())
    if args.plot:
        from ..estimate.plot import draw_skip_sweep, sweep_skip_ratios

        sweep = sweep_skip_ratios(
            args.model, resolution=args.resolution, baseline_resolution=args.baseline_resolution, **step_options(args)
        )
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        draw_skip_sweep(sweep).save(args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0
