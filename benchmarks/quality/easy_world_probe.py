"""Can the shapes DiT architecture learn shapes at all? Fine-tune it on an easy world (one large
solid red object on plain navy, the caption naming its shape) and sample every shape.

    python benchmarks/quality/easy_world_probe.py --init blockskip/shapes/weights/shapes-dit.safetensors \
        --steps 1500 --grid docs/images/shapes_easy_world_probe.png

`--world single-object` keeps one object per scene but every colour, pattern, size, background
and texture, fully captioned: it separates "several objects per scene" from "many attributes".

A diagnostic for issue 16, not a benchmark row: if shapes appear here within minutes but not in
the full world, the architecture and the conditioning path are sound and the full world's shape
signal is what is too weak (see docs/quality.md). Batch 32 at 32 px, AdamW lr 1e-3, no EMA; the
grid has one column per shape and one row per seed. Nothing is saved but the grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from blockskip.shapes import ShapesTextEncoder, build_shapes_dit, generate, load_shapes_dit, pack, render
from blockskip.shapes.generate import velocity
from blockskip.shapes.grid import save_grid
from blockskip.shapes.scenes import SHAPES, Scene, Thing, caption, sample_scene


def single_object_batch(generator: torch.Generator, encoder: ShapesTextEncoder, size: int = 32):
    """One object of any identity and size, on any background and texture, fully captioned."""
    scenes = [sample_scene(generator, objects=1) for _ in range(size)]
    tokens, ids = pack(torch.stack([render(scene, 32) for scene in scenes]))
    return tokens, ids, *encoder([caption(scene) for scene in scenes])


def easy_batch(generator: torch.Generator, encoder: ShapesTextEncoder, size: int = 32):
    scenes, prompts = [], []
    for _ in range(size):
        shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))]
        radius = 7 + 3 * float(torch.rand((), generator=generator))
        x, y = (radius + (32 - 2 * radius) * float(torch.rand((), generator=generator)) for _ in range(2))
        scenes.append(Scene((Thing(shape, "red", "solid", None, "large", x, y, radius),), "navy", "plain", 0))
        prompts.append(f"large red solid {shape} on navy")
    tokens, ids = pack(torch.stack([render(scene, 32) for scene in scenes]))
    return tokens, ids, *encoder(prompts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default=None, help="start from these weights (default: a random model)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--world", choices=["easy", "single-object"], default="easy",
                        help="easy: one solid red object on plain navy; single-object: one object of the full world, fully captioned")
    parser.add_argument("--grid", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_shapes_dit(args.init).train().requires_grad_(True) if args.init else build_shapes_dit(0)
    encoder, generator = ShapesTextEncoder(), torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
    started = time.perf_counter()
    for step in range(args.steps):
        tokens, ids, text, pooled = (easy_batch if args.world == "easy" else single_object_batch)(generator, encoder)
        sigma = torch.sigmoid(torch.randn(len(tokens), generator=generator))
        noise = torch.randn(tokens.shape, generator=generator)
        noisy = (1 - sigma[:, None, None]) * tokens + sigma[:, None, None] * noise
        loss = ((velocity(model, noisy, ids, text, pooled, sigma) - (noise - tokens)) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.perf_counter() - started:.0f} s", flush=True)
    model.eval()
    prompts = [f"large red solid {shape} on navy" for shape in SHAPES]
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    save_grid([generate(model, encoder, prompts, seed=seed, steps=20, size=32) for seed in range(3)], args.grid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
