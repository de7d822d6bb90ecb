"""Train the attribute critic on freshly rendered scenes and write it into the package.

    python benchmarks/quality/train_critic.py            # ~10 min on two CPU cores

The critic never sees a model's samples: its data are scenes from the generator (held-out subject
identities included, since it must read their attributes), seeded apart from pretraining. It prints
per-head accuracy on fresh scenes and on held-out-subject scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from safetensors.torch import save_file

from blockskip.shapes.critic import (
    COLOURS,
    CRITIC_FILE,
    IDENTITY_HEADS,
    SCENE_HEADS,
    AttributeCritic,
    critic_loss,
    read_colours,
    targets,
)
from blockskip.shapes.scenes import (
    HELD_OUT_SUBJECTS,
    render,
    sample_scene,
    subject_scene,
)

CRITIC_SEED = 1_000_000  # pretraining draws from seeds below this


def rendered(count: int, seed: int, subjects: bool = False):
    generator = torch.Generator().manual_seed(seed)
    if subjects:
        scenes = [subject_scene(HELD_OUT_SUBJECTS[i % len(HELD_OUT_SUBJECTS)], generator, extra=i % 3) for i in range(count)]
    else:
        scenes = [sample_scene(generator, held_out=True) for _ in range(count)]
    return torch.stack([render(scene) for scene in scenes]), targets(scenes)


@torch.no_grad()
def accuracy(critic: AttributeCritic, images: torch.Tensor, target: dict) -> dict[str, float]:
    out = critic(images)
    scores = {name: float((out[name].argmax(1) == target[name]).float().mean()) for name in [*IDENTITY_HEADS, *SCENE_HEADS]}
    for name in ("shapes_present", "colours_present"):
        present, predicted = target[name] > 0.5, out[name] > 0
        scores[f"{name} recall"] = float((present & predicted).sum() / present.sum())
        scores[f"{name} precision"] = float((present & predicted).sum() / predicted.sum().clamp(min=1))
    names = list(COLOURS)
    truth = [{names[i] for i in row.nonzero().flatten().tolist()} for row in target["colours"]]
    read = read_colours(out["colours"], target["pattern"])
    scores["colours"] = sum(a == b for a, b in zip(read, truth)) / len(truth)
    return {name: round(value, 3) for name, value in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=24_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    torch.manual_seed(0)
    images, target = rendered(args.scenes, CRITIC_SEED)
    test_images, test_target = rendered(2000, CRITIC_SEED + 1)
    subject_images, subject_target = rendered(500, CRITIC_SEED + 2, subjects=True)
    print(f"rendered in {time.perf_counter() - start:.0f} s", flush=True)
    critic = AttributeCritic()
    optimizer = torch.optim.AdamW(critic.parameters(), lr=2e-3, weight_decay=0.01)
    steps = args.epochs * (args.scenes // 128)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for epoch in range(args.epochs):
        critic.train()
        order = torch.randperm(args.scenes)
        for first in range(0, args.scenes - 127, 128):
            index = order[first : first + 128]
            batch = images[index]
            # Small brightness jitter and noise, so the critic tolerates a generator's imperfect pixels.
            batch = batch * (1 + 0.1 * (torch.rand(len(index), 1, 1, 1) - 0.5)) + 0.05 * torch.randn_like(batch)
            loss = critic_loss(critic(batch), {name: value[index] for name, value in target.items()})
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        critic.eval()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} test {accuracy(critic, test_images, test_target)}", flush=True)
    report = {
        "fresh scenes": accuracy(critic, test_images, test_target),
        "held-out subjects": accuracy(critic, subject_images, subject_target),
        "minutes": round((time.perf_counter() - start) / 60, 1),
        "command": "python benchmarks/quality/train_critic.py " + " ".join(argv or sys.argv[1:]),
    }
    print(json.dumps(report, indent=2))
    CRITIC_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: t.contiguous() for name, t in critic.state_dict().items()}, str(CRITIC_FILE))
    CRITIC_FILE.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {CRITIC_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
