"""The GPU check: real LoRA steps on full-size FLUX.1-dev, measured beside the estimate for the same plan.

    python benchmarks/gpu_check.py                 # on a CUDA machine: FLUX.1-dev, random bf16 weights
    python benchmarks/gpu_check.py --tiny --device cpu --steps 3   # the same code path, small (a test runs it)

FLUX.1-dev is built from its released config with random weights on the GPU (nothing is
downloaded). Each case prepares the model as the estimator does (`blockskip.training`), runs
`--steps` LoRA steps, and records `torch.cuda.max_memory_allocated` / `max_memory_reserved` and the
median step time after the first; beside them, the estimator's peak and its modelled s/step for the
same plan on the profile of the card it ran on. The cached case first precomputes a bank for
exactly the steps it runs. Results go to `benchmarks/results/gpu_check-<card>.json` and `.md`.
Under 8 minutes on an H100; prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from blockskip.estimate.calibration import build_real_model, resident_bytes
from blockskip.estimate.gpus import GPUS
from blockskip.estimate.memory import format_bytes, measure_peak_memory
from blockskip.estimate.step import estimate_step
from blockskip.estimate.step_time import step_time
from blockskip.families.presets import resolve_model
from blockskip.families.step_inputs import StepShape, training_inputs
from blockskip.residuals.schedule import TrainingSchedule
from blockskip.skipping.plan import BlockSkipPlan
from blockskip.training.precompute import precompute_residuals
from blockskip.training.training_step import TrainingSetup, make_optimizer, prepare_model, run_step

RESULTS = Path(__file__).parent / "results"
TINY_CONFIG = {"_class_name": "FluxTransformer2DModel", "num_layers": 2, "num_single_layers": 4, "attention_head_dim": 16,
               "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 16, "in_channels": 16,
               "axes_dims_rope": [4, 6, 6]}
CACHED = {"residuals": {"mode": "cached", "bank": "BANK"}, "offload": "drop"}


@dataclass
class Case:
    name: str
    plan: dict
    large_side: bool  # the baseline's side (512) rather than BlockSkip's (256)


CASES = (
    Case("LoRA baseline", {}, True),
    Case("online 30%", {"skip": {"ratio": 0.3}}, False),
    Case("cached 50%", {"skip": {"ratio": 0.5}, **CACHED}, False),
    Case("cached 50% + fp8 + checkpointing", {"skip": {"ratio": 0.5}, **CACHED,
                                              "kept_blocks": {"storage_dtype": "float8_e4m3fn", "gradient_checkpointing": True}}, False),
    Case("group offload + checkpointing", {"kept_blocks": {"group_offload": True, "gradient_checkpointing": True}}, True),
)


def profile_for(device: str) -> str:
    """The GPU profile closest to the card this runs on (the timing model's reference)."""
    if not device.startswith("cuda"):
        return "rtx4090-24gb"
    name = torch.cuda.get_device_name(device).lower()
    for needle, key in (("h200", "h200-141gb"), ("h100 pcie", "h100-pcie-80gb"), ("h100", "h100-sxm-80gb"),
                        ("a100", "a100-80gb" if torch.cuda.get_device_properties(device).total_memory > 50 * 2**30 else "a100-40gb"),
                        ("l4", "l4-24gb"), ("5090", "rtx5090-32gb"), ("4090", "rtx4090-24gb"), ("4080", "rtx4080-16gb"),
                        ("4070", "rtx4070-12gb"), ("3060", "rtx3060-12gb")):
        if needle in name:
            return key
    return "h100-sxm-80gb"


def run_case(case: Case, config: dict, shape: StepShape, steps: int, device: str, dtype: torch.dtype, work: Path, gpu: str) -> dict:
    data = {**case.plan, "patches": {"min_size": shape.height, "max_size": shape.height}}
    if case.plan.get("kept_blocks", {}).get("group_offload") and not device.startswith("cuda"):
        return {"case": case.name, "skipped": "group offload streams to a CUDA device"}
    schedule = None
    if "residuals" in case.plan:
        data["residuals"] = {"mode": "cached", "bank": str(work / "bank")}
        schedule = TrainingSchedule([(shape.height, shape.width)], steps, 1, BlockSkipPlan.from_dict(data), seed=0)
    plan = BlockSkipPlan.from_dict(data)
    setup = TrainingSetup()
    model = build_real_model(config, dtype, device=device)

    def inputs_for(step: int):
        torch.manual_seed(step)
        inputs, target = training_inputs(model, shape, dtype)
        move = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in inputs.items()}
        return move, target.to(device)

    if schedule is not None and not (work / "bank" / "manifest.json").exists():
        samples = [(schedule.keys(step)[0], inputs_for(step)[0]) for step in range(steps)]
        with torch.no_grad():
            precompute_residuals(model, plan, samples, plan.residuals.bank, schedule=schedule, progress=False)
    handle = prepare_model(model, plan, setup, schedule)
    optimizer = make_optimizer(model, setup)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    resident = resident_bytes(model, optimizer, "cuda" if device.startswith("cuda") else "cpu")
    seconds, peak_increase = [], 0
    for step in range(steps):
        inputs, target = inputs_for(step)
        started = time.perf_counter()
        with measure_peak_memory(device) as usage:
            if schedule is not None:
                upcoming = schedule.keys(step + 1) if step + 1 < steps else None
                with handle.step(schedule.keys(step), next_keys=upcoming):
                    run_step(model, inputs, target, optimizer)
            else:
                run_step(model, inputs, target, optimizer)
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
        peak_increase = max(peak_increase, usage.peak_increase_bytes)
    measured = {
        "max_memory_allocated": torch.cuda.max_memory_allocated(device) if device.startswith("cuda") else None,
        "max_memory_reserved": torch.cuda.max_memory_reserved(device) if device.startswith("cuda") else None,
        "resident_plus_peak_increase": resident + peak_increase,
        "median_seconds": statistics.median(seconds[1:] or seconds),
    }
    del model, optimizer, handle
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    estimate = estimate_step(config, plan, shape, setup, dtype=dtype, device="cuda" if device.startswith("cuda") else "cpu")
    modelled = step_time(estimate, gpu)
    return {"case": case.name, "plan": plan.to_dict(), "side": shape.height, "steps": steps, "measured": measured,
            "estimated": {"peak_bytes": estimate.peak_bytes, "seconds": modelled.seconds, "gpu_profile": gpu,
                          "compute_seconds": modelled.compute_seconds, "exposed_seconds": modelled.exposed_seconds}}


def markdown(report: dict) -> str:
    lines = [f"# GPU check on {report['device_name']}", "",
             f"{report['model']}, random {report['dtype']} weights, {report['steps']} steps a case (median after the first); "
             f"estimates for profile `{report['gpu_profile']}`, step-time efficiency {report['efficiency']} (uncalibrated).", "",
             "| case | side | measured peak (allocated) | ratio | reserved | estimated peak | measured s/step | ratio | modelled s/step |",
             "|---|---|---|---|---|---|---|---|---|"]

    def peak_of(row: dict) -> int:
        return row["measured"]["max_memory_allocated"] or row["measured"]["resident_plus_peak_increase"]

    baseline = report["cases"][0]  # the ratios are against the LoRA baseline measured in this run
    for row in report["cases"]:
        if "skipped" in row:
            lines.append(f"| {row['case']} | | skipped: {row['skipped']} | | | | | | |")
            continue
        measured, estimated = row["measured"], row["estimated"]
        reserved = format_bytes(measured["max_memory_reserved"]) if measured["max_memory_reserved"] else "–"
        lines.append(f"| {row['case']} | {row['side']} | {format_bytes(peak_of(row))} | {peak_of(row) / peak_of(baseline):.2f} | {reserved} | "
                     f"{format_bytes(estimated['peak_bytes'])} | {measured['median_seconds']:.3f} | "
                     f"{measured['median_seconds'] / baseline['measured']['median_seconds']:.2f} | {estimated['seconds']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small FLUX config instead of FLUX.1-dev")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default=str(RESULTS), help="folder for gpu_check-<card>.json and .md")
    args = parser.parse_args(argv)
    config = dict(TINY_CONFIG) if args.tiny else resolve_model("flux.1-dev")[0]
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    large, small = (64, 32) if args.tiny else (512, 256)
    text = 8 if args.tiny else 512
    gpu = profile_for(args.device)
    from blockskip.estimate.step_time import EFFICIENCY

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    report = {"model": "tiny FLUX config" if args.tiny else "FLUX.1-dev", "device_name": device_name, "dtype": str(dtype).removeprefix("torch."),
              "steps": args.steps, "gpu_profile": gpu, "efficiency": EFFICIENCY, "profile": GPUS[gpu].describe(), "cases": []}
    work = Path(tempfile.mkdtemp(prefix="blockskip-gpu-check-"))
    try:
        for case in CASES:
            shape = StepShape(large if case.large_side else small, large if case.large_side else small, text, 1)
            started = time.perf_counter()
            row = run_case(case, config, shape, args.steps, args.device, dtype, work, gpu)
            row["wall_seconds"] = round(time.perf_counter() - started, 1)
            report["cases"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_name.lower().replace(" ", "-").replace("/", "-")
    (out / f"gpu_check-{slug}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"gpu_check-{slug}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
