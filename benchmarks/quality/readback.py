"""How well a shapes DiT draws what its prompt says, read back by the attribute critic.

    python benchmarks/quality/readback.py                               # the shipped checkpoint
    python benchmarks/quality/readback.py --checkpoint runs/shapes-pretrain/checkpoint.pt --sides 32,64

For `--prompts` single-object scenes (large object, random background; fresh seeds that no
pretraining batch uses) the model samples one image per prompt at each side; the critic, trained
on 32-px renders, reads them after average pooling to 32 px. Reported per side: how often the
main object's shape, pattern and colours (a set, as the critic reads them) and the background
match the prompt, each with its binomial standard error. `held-out` uses the ten held-out
subjects' identities (never drawn in pretraining, described in words); `pretraining` uses
identities pretraining draws. Issue 16 asks for shapes ≥ 80% and colours ≥ 90% on held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from blockskip.shapes import ShapesTextEncoder, generate, load_shapes_dit
from blockskip.shapes.critic import critic_view, load_critic, read_colours
from blockskip.shapes.model import build_shapes_dit
from blockskip.shapes.scenes import BACKGROUNDS, HELD_OUT_SUBJECTS, PATTERNS, SHAPES, Subject, caption, sample_scene, subject_scene

FRESH_SEED = 7_777_777_777  # far from pretraining's seed * 1_000_003 + step


def prompts_for(kind: str, count: int) -> list:
    generator = torch.Generator().manual_seed(FRESH_SEED + (kind == "held-out"))
    scenes = []
    for index in range(count):
        if kind == "held-out":
            scenes.append(subject_scene(HELD_OUT_SUBJECTS[index % len(HELD_OUT_SUBJECTS)], generator))
        else:
            scene = sample_scene(generator, objects=1)
            scenes.append(subject_scene(Subject("-", *scene.things[0].identity), generator))
    return scenes


@torch.no_grad()
def read_back(model, critic, encoder, scenes, side: int, seed: int = 0, steps: int = 20, ralu=None) -> dict[str, float]:
    images = generate(model, encoder, [caption(scene) for scene in scenes], seed=seed, steps=steps, size=side, ralu=ralu)
    features = critic(critic_view(images))
    shapes, patterns = features["shape"].argmax(1), features["pattern"].argmax(1)
    colours = read_colours(features["colours"], patterns)
    hits = {"shape": [], "pattern": [], "colours": [], "background": []}
    for row, scene in enumerate(scenes):
        thing = scene.things[0]
        hits["shape"].append(SHAPES[int(shapes[row])] == thing.shape)
        hits["pattern"].append(PATTERNS[int(patterns[row])] == thing.pattern)
        hits["colours"].append(colours[row] == {thing.colour, thing.accent} - {None})
        hits["background"].append(list(BACKGROUNDS)[int(features["background"][row].argmax())] == scene.background)
    return {name: sum(values) / len(values) for name, values in hits.items()}


def load_model(checkpoint: str | None):
    if checkpoint is None or not checkpoint.endswith(".pt"):
        return load_shapes_dit(checkpoint)
    saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
    model = build_shapes_dit(config=saved["args"].get("config"))
    model.load_state_dict(saved["ema"])
    return model.eval().requires_grad_(False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a pretraining checkpoint.pt (its EMA) or a .safetensors; default: the shipped model")
    parser.add_argument("--sides", default="32", help="sampling sides in px, comma-separated")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, critic, encoder = load_model(args.checkpoint), load_critic(), ShapesTextEncoder()
    results = {}
    for kind in ("held-out", "pretraining"):
        scenes = prompts_for(kind, args.prompts)
        for side in (int(part) for part in args.sides.split(",")):
            results[f"{kind} @{side}"] = read_back(model, critic, encoder, scenes, side)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{'prompts':<18} {'shape':>13} {'pattern':>13} {'colours':>13} {'background':>13}   ({args.prompts} prompts, ± standard error)")
    for name, scores in results.items():
        cells = [f"{value:.2f} ± {math.sqrt(value * (1 - value) / args.prompts):.2f}" for value in scores.values()]
        print(f"{name:<18} " + " ".join(f"{cell:>13}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
