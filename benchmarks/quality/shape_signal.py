"""Does a shapes DiT use the shape word? Its flow-matching loss with the right caption, with only
the shape word swapped, and with no caption, at fixed noise levels.

    python benchmarks/quality/shape_signal.py          # the shipped model

For single-object scenes (readback.py's pretraining identities) it noises the same images with
the same noise at each sigma and prints the mean squared error of the predicted velocity. A model
that draws what the caption says has a clearly lower loss with the right shape word than with a
wrong one at the noise levels where the object's outline is still undecided. Equal losses mean
the shape word is ignored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from readback import load_model, prompts_for  # noqa: E402

from blockskip.shapes import ShapesTextEncoder, pack, render  # noqa: E402
from blockskip.shapes.generate import velocity  # noqa: E402
from blockskip.shapes.scenes import SHAPES, caption, replace  # noqa: E402

SIGMAS = (0.98, 0.9, 0.8, 0.6, 0.4, 0.2)


def wrong_shape(scene, index: int):
    thing = scene.things[0]
    others = [shape for shape in SHAPES if shape != thing.shape]
    return replace(scene, things=(replace(thing, shape=others[index % len(others)]),))


@torch.no_grad()
def losses(model, encoder, scenes, side: int) -> list[tuple[float, float, float, float]]:
    tokens, ids = pack(torch.stack([render(scene, side) for scene in scenes]))
    right = encoder([caption(scene) for scene in scenes])
    wrong = encoder([caption(wrong_shape(scene, index)) for index, scene in enumerate(scenes)])
    empty = encoder([""] * len(scenes))
    rows = []
    for sigma in SIGMAS:
        noise = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
        noisy, target = (1 - sigma) * tokens + sigma * noise, noise - tokens
        level = torch.full((len(scenes),), sigma)
        errors = [float(((velocity(model, noisy, ids, text, pooled, level) - target) ** 2).mean()) for text, pooled in (right, wrong, empty)]
        rows.append((sigma, *errors))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint.pt (its EMA) or a .safetensors; default: the shipped model")
    parser.add_argument("--sides", default="32,64")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, encoder = load_model(args.checkpoint), ShapesTextEncoder()
    scenes = prompts_for("pretraining", args.scenes)
    print(f"{'side':>4} {'sigma':>6} {'right':>8} {'wrong shape':>12} {'no caption':>11} {'gap (wrong − right) / right':>28}")
    for side in (int(part) for part in args.sides.split(",")):
        for sigma, right, wrong, empty in losses(model, encoder, scenes, side):
            print(f"{side:>4} {sigma:>6.2f} {right:>8.4f} {wrong:>12.4f} {empty:>11.4f} {(wrong - right) / right:>27.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
