"""`blockskip select`: measure which blocks to skip with the cross-attention masking probe.

    blockskip select --pipeline DIR [--lora DIR ...] --prompts FILE --ratio 0.3 -o plan.json
    blockskip select --from-profile plan.profile.json --ratio 0.4 -o plan40.json
    blockskip select --from-profile plan.profile.json --table

The first form generates with the pipeline (each LoRA loaded in turn), writes the profile
(`<plan>.profile.json`), the plot (`<plan>.png`) and a plan with the chosen leading and trailing
counts. The other forms reuse a saved profile: any ratio it covers is a lookup, and `--table`
prints the `skip_table.py` entry to contribute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .arguments import fraction, non_negative_int, output_file, positive_int


def register(commands) -> None:
    parser = commands.add_parser(
        "select",
        help="choose the blocks to skip by cross-attention masking (writes a plan, a profile and a plot)",
        description="Mask image->text attention in windows of blocks, measure how much the generations change, "
        "and pick (n*, m*) = argmin over n + m = k of the first-n and last-m masking distances.",
    )
    source = parser.add_argument_group("what to probe")
    source.add_argument("--pipeline", help="a diffusers pipeline folder (or Hub id)")
    source.add_argument("--lora", nargs="+", default=[], metavar="DIR", help="LoRA folders, probed one at a time")
    source.add_argument(
        "--prompts",
        help="a text file (one prompt a line, '#' comments) or JSON: a list, or {lora folder name: [prompts]}",
    )
    source.add_argument("--from-profile", metavar="PROFILE", help="reuse a saved profile instead of generating")
    choice = parser.add_argument_group("what to choose")
    choice.add_argument("--ratio", type=fraction, help="skip ratio: k = round_half_up(ratio * N) blocks")
    choice.add_argument("-o", "--output", type=output_file, metavar="PLAN", help="where to write the plan (JSON)")
    choice.add_argument("--profile", type=output_file, metavar="PATH", help="where to write the profile (default: <plan>.profile.json)")
    choice.add_argument("--plot", type=output_file, metavar="PNG", help="where to draw the masking curve (default: <plan>.png)")
    choice.add_argument("--table", action="store_true", help="print the profile's skip table as a skip_table.py entry")
    probe = parser.add_argument_group("how to probe")
    probe.add_argument("--window", type=positive_int, default=14, help="blocks masked together on the curve (default 14)")
    probe.add_argument("--stride", type=positive_int, default=1, help="window step (default 1)")
    probe.add_argument(
        "--max-skip", default=None, help="largest n and m to measure (default: k of --ratio; 'all' for N - 1)"
    )
    probe.add_argument("--seeds", type=non_negative_int, nargs="+", default=[0], help="seeds per prompt (default 0)")
    probe.add_argument("--steps", type=positive_int, default=20, help="inference steps (default 20)")
    probe.add_argument(
        "--embedder", default="latent",
        help="'latent' (no model; a fallback), or a DINO/CLIP folder, 'dino:PATH', 'clip:PATH' (default latent)",
    )
    probe.add_argument("--height", type=positive_int)
    probe.add_argument("--width", type=positive_int)
    probe.add_argument("--guidance-scale", type=float)
    probe.add_argument(
        "--pipeline-arg", action="append", default=[], metavar="KEY=JSON",
        help="another pipeline call argument, value as JSON (e.g. max_sequence_length=256); repeatable",
    )
    probe.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    probe.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    probe.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def read_prompts(path: str | Path) -> list[str] | dict[str, list[str]]:
    """Prompts from a text file (one a line) or a JSON list / {LoRA name: [prompts]} mapping."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            return data
        if isinstance(data, dict) and all(
            isinstance(value, list) and all(isinstance(item, str) for item in value) for value in data.values()
        ):
            return data
        raise ValueError(f"{path}: expected a JSON list of prompts or an object of prompt lists")
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def _pipeline_arguments(args: argparse.Namespace) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    for name in ("height", "width", "guidance_scale"):
        if getattr(args, name) is not None:
            arguments[name] = getattr(args, name)
    for item in args.pipeline_arg:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--pipeline-arg {item!r}: expected KEY=JSON")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value  # a bare string
    return arguments


def _measure(args: argparse.Namespace):
    import torch
    from diffusers import DiffusionPipeline

    from ..families.layouts import get_layout
    from ..selection.embeddings import load_embedder
    from ..selection.select import select_blocks
    from ..skipping.skip_table import blocks_for_ratio

    if not args.pipeline or not args.prompts:
        raise ValueError("give --pipeline DIR and --prompts FILE (or --from-profile PROFILE)")
    if args.ratio is None or not args.output:
        raise ValueError("give --ratio and -o PLAN: the probe measures what the ratio needs and writes the plan")
    prompts = read_prompts(args.prompts)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    # float32 is the loading default; naming it would only trigger diffusers' torch_dtype/dtype rename warning.
    load_arguments = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipeline = DiffusionPipeline.from_pretrained(args.pipeline, **load_arguments).to(device)
    num_blocks = get_layout(pipeline.transformer).num_blocks
    if args.max_skip == "all":
        max_skip = num_blocks - 1
    elif args.max_skip is not None:
        max_skip = int(args.max_skip)
    else:
        max_skip = blocks_for_ratio(args.ratio, num_blocks)
    max_skip = min(max_skip, num_blocks - 1)
    embedder = load_embedder(args.embedder, device=device)
    if embedder.wants == "latents":
        print("note: the latent metric is a fallback; the paper measures DINO distances (--embedder PATH)")
    return select_blocks(
        pipeline,
        prompts,
        loras=args.lora,
        seeds=args.seeds,
        window=args.window,
        stride=args.stride,
        max_skip=max_skip,
        embedder=embedder,
        steps=args.steps,
        pipeline_kwargs=_pipeline_arguments(args),
        progress=not args.no_progress,
    )


def _sibling(plan: Path, suffix: str) -> Path:
    return plan.with_name(plan.stem + suffix)


def run(args: argparse.Namespace) -> int:
    from ..selection.plotting import save_profile_plot
    from ..selection.profile import SelectionProfile, best_skip, table_from_profile, table_source_code
    from ..skipping.plan import BlockSkipPlan

    if args.from_profile:
        profile = SelectionProfile.load(args.from_profile)
        if args.ratio is None and not args.table:
            raise ValueError("with --from-profile, give --ratio and -o PLAN, or --table")
    else:
        from ..selection.masking import MaskingError

        try:
            profile = _measure(args)
        except MaskingError as error:  # the CLI reports these like other user-facing errors
            raise ValueError(str(error)) from error

    output = Path(args.output) if args.output else None
    split = None
    if args.ratio is not None:
        if output is None:
            raise ValueError("--ratio needs -o PLAN")
        split = best_skip(profile, args.ratio)
        k = split.leading + split.trailing
        plan = BlockSkipPlan.from_dict(
            {
                "model": {"class": profile.model_class, "num_blocks": profile.num_blocks},
                "skip": {"leading": split.leading, "trailing": split.trailing},
            }
        )
        plan.save(output)
        runner_up = sorted(
            (profile.cost(n, k - n), n) for n in range(k + 1) if n != split.leading
        )[:1]
        print(
            f"{profile.model_class}, {profile.num_blocks} blocks, metric {profile.metric}, "
            f"{len(profile.samples)} generations"
        )
        line = (
            f"ratio {args.ratio:g} -> k = {k} -> skip {split.leading} leading + {split.trailing} trailing "
            f"(cost {profile.cost(split.leading, split.trailing):.4g}"
        )
        if runner_up:
            cost, n = runner_up[0]
            line += f"; next best ({n}, {k - n}) {cost:.4g}"
        print(line + ")")
        print(f"plan:    {output}")
    if not args.from_profile:
        profile_path = Path(args.profile) if args.profile else _sibling(output, ".profile.json")
        profile.save(profile_path)
        print(f"profile: {profile_path}")
    plot_path = Path(args.plot) if args.plot else (_sibling(output, ".png") if output else None)
    if plot_path is not None:
        save_profile_plot(profile, plot_path, split=(split.leading, split.trailing) if split else None)
        print(f"plot:    {plot_path}")
    table = table_from_profile(profile)
    if args.table:
        print(table_source_code(table))
    elif table.entries:
        covered = ", ".join(f"{ratio:g} -> {tuple(value)}" for ratio, value in sorted(table.entries.items()))
        print(f"covered ratios: {covered}")
    return 0
