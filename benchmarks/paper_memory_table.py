"""The paper's FLUX.1-dev memory table, estimated: LoRA @512 vs BlockSkip 30/40/50% @256.

FLUX.1-dev in bf16, one image, 512 text tokens, rank-4 LoRA on the attention projections
(to_q, to_k, to_v, to_out.0), AdamW. Every number is the fake-tensor estimate of one training
step (`blockskip.estimate`); nothing here needs a GPU. Prints, asserts nothing.

    python benchmarks/paper_memory_table.py [--json out.json]

Rows:
- the paper's setting is cached residuals (skipped blocks cost nothing during training);
- "online" rows are blockskip's default mode (skipped blocks run under no_grad, their weights
  streamed from the CPU, two blocks' worth on the GPU at a time);
- the goal row: skip 50% + fp8 kept weights + gradient checkpointing, cached residuals — no
  weight crosses PCIe during a step.
"""

from __future__ import annotations

import argparse
import json
import time

from blockskip.estimate import estimate_step
from blockskip.families.presets import get_preset
from blockskip.families.step_inputs import StepShape
from blockskip.skipping.plan import BlockSkipPlan
from blockskip.training.training_step import TrainingSetup

GIB = 1024**3
# Paper numbers: the seed table (approximate), and a secondary summary's exact values.
PAPER = {
    "LoRA @512": {"seed_gib": "~30", "summary_gib": "35.99", "seed_tflops": "~28"},
    "skip 30% @256": {"seed_gib": "~15", "summary_gib": "20.78", "seed_tflops": "~7"},
    "skip 40% @256": {"seed_gib": "—", "summary_gib": "—", "seed_tflops": "—"},
    "skip 50% @256": {"seed_gib": "~12", "summary_gib": "10.42", "seed_tflops": "~5"},
}


def rows() -> list[tuple[str, dict, int, str | None]]:
    patches = {"min_size": 256, "max_size": 512, "multiple_of": 16}
    table = [("LoRA @512", {"patches": {"min_size": 512, "max_size": 512}}, 512, "online")]
    for ratio in (0.3, 0.4, 0.5):
        name = f"skip {round(ratio * 100)}% @256"
        table.append((name, {"skip": {"ratio": ratio}, "patches": patches}, 256, "cached"))
    for ratio in (0.3, 0.4, 0.5):
        name = f"skip {round(ratio * 100)}% @256 online"
        table.append((name, {"skip": {"ratio": ratio}, "patches": patches}, 256, "online"))
    goal = {"skip": {"ratio": 0.5}, "patches": patches,
            "kept_blocks": {"gradient_checkpointing": True, "storage_dtype": "float8_e4m3fn"}}
    table.append(("goal: 50% + fp8 + ckpt, cached", goal, 256, "cached"))
    table.append(("goal: 50% + fp8 + ckpt, online", goal, 256, "online"))
    no_ckpt = {**goal, "kept_blocks": {"storage_dtype": "float8_e4m3fn"}}
    table.append(("50% + fp8 (no ckpt), cached", no_ckpt, 256, "cached"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    preset = get_preset("flux.1-dev")
    setup = TrainingSetup(lora_rank=4)
    results = []
    print(f"{'row':34} {'peak GiB':>9} {'ratio':>6} {'TFLOPs':>7} {'ratio':>6} {'fwd':>6} {'bwd':>6}   "
          f"{'paper GiB (seed / summary)':>27} {'paper TFLOPs':>12}  s")
    baseline = None
    for name, plan, side, residuals in rows():
        started = time.perf_counter()
        estimate = estimate_step(preset.config, BlockSkipPlan.from_dict(plan), StepShape(side, side, 512, 1), setup,
                                 residuals=residuals, label=name)
        baseline = baseline or estimate
        paper = PAPER.get(name, {})
        paper_gib = f"{paper['seed_gib']} / {paper['summary_gib']}" if paper else ""
        print(f"{name:34} {estimate.peak_bytes / GIB:9.2f} {estimate.peak_bytes / baseline.peak_bytes:6.2f} "
              f"{estimate.flops / 1e12:7.2f} {estimate.flops / baseline.flops:6.2f} {estimate.forward_flops / 1e12:6.2f} "
              f"{estimate.backward_flops / 1e12:6.2f}   {paper_gib:>27} {paper.get('seed_tflops', ''):>12}  "
              f"{time.perf_counter() - started:.0f}")
        results.append({"row": name, **estimate.to_dict()})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
