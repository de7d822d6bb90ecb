"""RALU on the shapes DiT: sampling speed-up (measured FLOPs and wall time) and quality by the
critic, against full-resolution sampling at the same number of model calls.

    python benchmarks/quality/ralu.py --threads 2                  # 100 held-out prompts at 64 px
    python benchmarks/quality/ralu.py --grid docs/images/ralu_shapes.png --json benchmarks/quality/results/ralu.json

Rows: full resolution with 20, 18 and 10 Euler steps, and RALU's 4x (5/6/7 calls) and 7x (2/3/5)
presets. Each row samples the same single-object prompts (readback.py's held-out set) with one
seed; the critic reads the main object's shape, pattern and colours and the background back.
FLOPs are counted (matrix products and attention, both guidance branches) while sampling one
prompt; wall time is the whole prompt set on this machine. The model must have been pretrained
at both the half and the full side (the shipped checkpoint is: 32, 48 and 64 px).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from readback import load_model, prompts_for, read_back  # noqa: E402

from blockskip.estimate.accounting import FlopCounter  # noqa: E402
from blockskip.sampling import RALUSettings  # noqa: E402
from blockskip.shapes import ShapesTextEncoder, generate  # noqa: E402
from blockskip.shapes.critic import load_critic  # noqa: E402
from blockskip.shapes.grid import save_grid  # noqa: E402
from blockskip.shapes.model import WEIGHTS_FILE  # noqa: E402
from blockskip.shapes.scenes import caption  # noqa: E402

ROWS = (
    ("full, 20 steps", 20, None),
    ("full, 18 steps", 18, None),
    ("RALU 4x (5/6/7)", 18, "4x"),
    ("full, 10 steps", 10, None),
    ("RALU 7x (2/3/5)", 10, "7x"),
)


def sampling_flops(model, encoder, prompt: str, side: int, steps: int, settings) -> int:
    counter = FlopCounter()
    with counter:
        generate(model, encoder, [prompt], steps=steps, size=side, ralu=settings)
    return counter.total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint.pt (its EMA) or a .safetensors; default: the shipped model")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    parser.add_argument("--grid", type=Path, default=None, help="also write a sample grid (one row per setting) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, critic, encoder = load_model(args.checkpoint), load_critic(), ShapesTextEncoder()
    scenes = prompts_for("held-out", args.prompts)
    rows, grid = [], []
    for name, steps, preset in ROWS:
        settings = RALUSettings.preset(preset) if preset else None
        flops = sampling_flops(model, encoder, caption(scenes[0]), args.side, steps, settings)
        started = time.perf_counter()
        scores = read_back(model, critic, encoder, scenes, args.side, seed=args.seed, steps=steps, ralu=settings)
        seconds = time.perf_counter() - started
        rows.append({"setting": name, "calls": steps, "gflops_per_image": flops / 1e9, "seconds_per_image": seconds / len(scenes), **scores})
        grid.append(generate(model, encoder, [caption(scene) for scene in scenes[:8]], seed=args.seed, steps=steps, size=args.side, ralu=settings))
        print(f"{name}: done", file=sys.stderr, flush=True)
    reference = {row["calls"]: row for row in rows if not row["setting"].startswith("RALU")}
    header = f"{'setting':<18}{'calls':>6}{'GFLOPs/img':>12}{'FLOPs ratio':>13}{'s/img':>8}{'time ratio':>12}   shape    pattern  colours  background"
    print(f"{args.prompts} held-out prompts at {args.side} px, seed {args.seed}; ratios against full resolution at the same calls; ± standard error")
    print(header)
    for row in rows:
        base = reference[row["calls"]]
        row["flops_ratio"] = base["gflops_per_image"] / row["gflops_per_image"]
        row["time_ratio"] = base["seconds_per_image"] / row["seconds_per_image"]
        cells = " ".join(f"{row[key]:.2f}±{math.sqrt(row[key] * (1 - row[key]) / args.prompts):.2f}" for key in ("shape", "pattern", "colours", "background"))
        print(f"{row['setting']:<18}{row['calls']:>6}{row['gflops_per_image']:>12.3f}{row['flops_ratio']:>12.2f}x"
              f"{row['seconds_per_image']:>8.3f}{row['time_ratio']:>11.2f}x   {cells}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        checkpoint = Path(args.checkpoint or WEIGHTS_FILE).resolve()
        root = Path(__file__).resolve().parents[2]
        shown = str(checkpoint.relative_to(root)) if checkpoint.is_relative_to(root) else checkpoint.name
        args.json.write_text(json.dumps({"checkpoint": shown, "side": args.side, "prompts": args.prompts, "seed": args.seed,
                                         "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        save_grid(grid, args.grid, scale=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
