"""`blockskip precompute`: fill the residual bank of a cached-mode plan from an image folder.

    blockskip precompute --pipeline DIR --images DIR --plan plan.json --bank DIR --steps N --batch-size B
        [--seed 0] [--dtype bf16|fp16|fp32] [--device cpu|cuda] [--chunk-size 8] [--sampler uniform]

It builds the `TrainingSchedule` (image sizes read from the files), the `DynamicPatchCollator`
(the plan's patches, convention "sigma") and the `PipelineInputs`, runs `precompute_residuals`
on the pipeline's transformer, and writes beside the bank what training needs to feed the same
inputs: `schedule.json` (`TrainingSchedule.from_dict`) and `precompute.json` (the pipeline, dtype,
input settings and image files). Running the same command again resumes an interrupted bank (from
the same images and captions only: the entries already written are checked against them) and
does nothing on a complete one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .arguments import non_negative_int, positive_float, positive_int

DEVICES = ("cpu", "cuda")


def register(commands) -> None:
    parser = commands.add_parser(
        "precompute", help="compute the residual bank of a cached-mode plan from a pipeline and an image folder"
    )
    parser.add_argument("--pipeline", required=True, help="a diffusers pipeline folder (FLUX, SD3 or Sana)")
    parser.add_argument("--images", required=True, help="images with captions (metadata.jsonl or a .txt per image)")
    parser.add_argument("--plan", required=True, help="the plan file (its skip and patches are used)")
    parser.add_argument("--bank", help="the bank folder (default: the plan's residuals.bank)")
    parser.add_argument("--steps", type=positive_int, required=True, help="training steps the bank covers")
    parser.add_argument("--batch-size", type=positive_int, required=True, help="training batch size")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="the schedule's seed (default 0)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="pipeline dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="where the model runs; on cuda the "
                        "transformer's blocks are streamed to the GPU one at a time (default cpu)")
    parser.add_argument("--chunk-size", type=positive_int, default=8, help="samples per transformer forward (default 8)")
    parser.add_argument("--sampler", default="uniform", help="noise-level sampler, NAME or NAME:key=value,... "
                        "(uniform, logit_normal:mean=0,std=1, mode:scale=1.29, sigmoid:scale=1; shift=S; default uniform)")
    parser.add_argument("--max-sequence-length", type=positive_int, help="text tokens (default: FLUX 512, SD3 77, Sana 300)")
    parser.add_argument("--guidance-scale", type=float, default=3.5, help="FLUX guidance input (default 3.5)")
    parser.add_argument("--default-prompt", help="caption for images that have none (else they are an error)")
    parser.add_argument("--shard-mib", type=positive_float, default=256.0, help="bank shard size; an interrupted run "
                        "resumes after the last complete shard (default 256)")
    parser.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers for reading images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..crops.images import ImageLoadError
    from ..residuals.bank import BankError

    try:
        return _precompute(args)
    except (BankError, ImageLoadError) as error:
        print(f"blockskip precompute: {error}", file=sys.stderr)
        return 2


def _precompute(args: argparse.Namespace) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..crops.collator import DynamicPatchCollator
    from ..crops.image_folder import ImageFolder
    from ..crops.sampler_spec import parse_sampler
    from ..residuals.schedule import TrainingSchedule
    from ..skipping.plan import BlockSkipPlan
    from ..training.pipeline_inputs import PipelineInputs, load_pipeline
    from ..training.precompute import precompute_residuals

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    plan = BlockSkipPlan.load(args.plan)
    bank = _bank_folder(args, plan)
    dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    images = ImageFolder(args.images, default_prompt=args.default_prompt)
    image_sizes = images.image_sizes()  # decodes every image: a broken file fails now, named
    sampler = parse_sampler(args.sampler)

    pipeline = load_pipeline(args.pipeline, dtype)
    inputs = PipelineInputs(
        pipeline, max_sequence_length=args.max_sequence_length, guidance_scale=args.guidance_scale, device=args.device
    )
    patches = _patch_schedule(plan, inputs.pixel_multiple)
    schedule = TrainingSchedule(image_sizes, args.steps, args.batch_size, patches, seed=args.seed, sampler=sampler)
    transformer = pipeline.transformer
    existing = _existing_bank(bank, transformer, plan, schedule)
    if existing is not None and existing["complete"]:
        size = sum(shard["bytes"] for shard in existing["shards"])
        print(f"{bank} is already complete: {existing['entries']} entries, {_mib(size)}, for this model, plan and "
              "schedule; nothing to compute")
        print(f"schedule fingerprint: {schedule.fingerprint()}")
        return 0

    bank.mkdir(parents=True, exist_ok=True)
    if existing is None or not (bank / "precompute.json").is_file():  # a resume keeps the first run's record
        _write_json(bank / "schedule.json", schedule.to_dict())
        _write_json(bank / "precompute.json", {
            "pipeline": str(Path(args.pipeline).resolve()),
            "dtype": dtype,
            "inputs": inputs.settings(),
            "images": str(images.root.resolve()),
            "default_prompt": args.default_prompt,
            "files": [path.relative_to(images.root).as_posix() for path in images.files],
        })

    device = torch.device(args.device)
    _encode_captions(pipeline, inputs, images.prompts, device)
    pipeline.vae.to(device)

    collator = DynamicPatchCollator(schedule.patches, convention="sigma")
    loader = DataLoader(schedule.dataset(images), batch_size=schedule.batch_size, shuffle=False,
                        collate_fn=collator, num_workers=args.num_workers)
    # On a resume the entries already written are encoded again (no transformer pass) so that
    # precompute_residuals can check they come from the same images and captions.
    summary = precompute_residuals(
        transformer, plan, inputs.bank_inputs(loader, schedule), bank, schedule=schedule,
        chunk_size=args.chunk_size, device=device if args.device == "cuda" else None,
        num_entries=args.steps * args.batch_size, shard_bytes=max(1, int(args.shard_mib * 2**20)),
        progress=not args.no_progress,
    )
    resumed = f", {summary.entries - summary.computed} were already there" if summary.computed < summary.entries else ""
    print(f"wrote {summary.bank}: {summary.entries} entries ({summary.computed} computed now{resumed}), "
          f"{_mib(summary.bytes_written)}, {summary.seconds:.1f} s")
    print(f"schedule fingerprint: {schedule.fingerprint()}")
    print(f"training rebuilds the schedule with TrainingSchedule.from_dict(<{bank / 'schedule.json'}>)")
    return 0


def _bank_folder(args: argparse.Namespace, plan) -> Path:
    planned = plan.residuals.bank
    if args.bank is None and planned is None:
        raise ValueError("no bank folder: pass --bank DIR or set residuals.bank in the plan")
    if args.bank is not None and planned is not None and Path(args.bank).resolve() != Path(planned).resolve():
        raise ValueError(f"--bank {args.bank} is not the plan's residuals.bank ({planned}); training would read "
                         "the plan's folder: drop --bank or change the plan")
    if plan.residuals.mode != "cached":
        print(f"note: the plan's residuals.mode is {plan.residuals.mode!r}; training reads this bank only with 'cached'",
              file=sys.stderr)
    return Path(args.bank if args.bank is not None else planned)


def _encode_captions(pipeline, inputs, prompts, device) -> None:
    """Encode every caption once on `device`, then send the text encoders back to the CPU."""
    encoders = [getattr(pipeline, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
    encoders = [encoder for encoder in encoders if encoder is not None]
    for encoder in encoders:
        encoder.to(device)
    inputs.prompts.add(prompts)
    for encoder in encoders:
        encoder.to("cpu")


def _patch_schedule(plan, pixel_multiple: int):
    """The plan's patches, with the pipeline's pixel granularity where the plan leaves it open."""
    from ..crops.patches import resolve_patch_schedule

    multiple = plan.patches.multiple_of
    patches = resolve_patch_schedule(plan, {"multiple_of": multiple if multiple is not None else pixel_multiple})
    if patches.multiple_of % pixel_multiple:
        raise ValueError(f"patches.multiple_of is {patches.multiple_of}, but this pipeline needs crops in "
                         f"multiples of {pixel_multiple} pixels")
    return patches


def _existing_bank(bank: Path, model, plan, schedule) -> dict | None:
    """The bank's manifest if there is one, after checking it was made for this model, plan and schedule."""
    from ..residuals.bank import MANIFEST, BankError, read_manifest
    from ..training.precompute import bank_header

    if not (bank / MANIFEST).is_file():
        return None
    manifest = read_manifest(bank)
    ours = bank_header(model, plan, schedule)
    for field, value in ours.items():
        if manifest.get(field) != json.loads(json.dumps(value)):
            raise BankError(f"{bank} holds a bank for another {field} than this command's "
                            f"({json.dumps(manifest.get(field))[:80]} vs {json.dumps(value)[:80]}); use a new folder")
    return manifest


def _write_json(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".part")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f} MiB"
