"""Pretrain the shapes DiT with flow matching on procedural scenes; resumable.

    python benchmarks/quality/pretrain.py --out runs/shapes-pretrain --images 150000
    python benchmarks/quality/pretrain.py --out runs/shapes-pretrain --export   # EMA weights -> package

Every step's batch is drawn from a generator seeded by the step number, so a resumed run sees
exactly the images an uninterrupted one would. A checkpoint (model, EMA, optimizer, counters) is
written atomically every `--checkpoint-every` steps and at the end; rerunning the same command
continues from it. `--export` writes the EMA weights (fp16 safetensors) and a model card with
the config, this command, the images seen and the training time into blockskip/shapes/weights/.

Recipe: batch 32, AdamW lr 6e-4 (200 warm-up steps), EMA 0.999, σ ~ logit-normal(0, 1), loss
‖v − (ε − x₀)‖²; captions: 10% empty (for classifier-free guidance), otherwise each attribute role
(size, colour, pattern, accent, texture) left out with probability 0.15, so partial captions such as
"large sks circle on navy" are in distribution.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from blockskip.shapes import (
    ShapesTextEncoder,
    build_shapes_dit,
    generate,
    pack,
    render,
    sample_scene,
)
from blockskip.shapes.generate import velocity
from blockskip.shapes.grid import save_grid
from blockskip.shapes.model import CARD_FILE, SHAPES_DIT_CONFIG, WEIGHTS_FILE
from blockskip.shapes.scenes import caption

ROLES = ("size", "colour", "pattern", "accent", "texture")
PREVIEW_PROMPTS = [
    "large red solid circle on navy",
    "large blue striped white square on beige",
    "large yellow checkered black triangle on gray",
    "large green twotone magenta ring on maroon",
    "small white solid cross large cyan solid diamond on olive",
    "large magenta solid square small yellow solid circle on speckled teal",
]


def training_batch(step: int, batch_size: int, encoder: ShapesTextEncoder, seed: int):
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    scenes = [sample_scene(generator) for _ in range(batch_size)]
    prompts = []
    for scene in scenes:
        if torch.rand((), generator=generator) < 0.1:
            prompts.append("")
            continue
        dropped = frozenset(role for role in ROLES if torch.rand((), generator=generator) < 0.15)
        prompts.append(caption(scene, drop=dropped))
    images = torch.stack([render(scene) for scene in scenes])
    tokens, ids = pack(images)
    text, pooled = encoder(prompts)
    sigma = torch.sigmoid(torch.randn(batch_size, generator=generator))
    noise = torch.randn(tokens.shape, generator=generator)
    return tokens, ids, text, pooled, sigma, noise


class StepBatches(torch.utils.data.Dataset):
    """Batch number `step` of the run; a DataLoader worker renders the next batches while the model trains."""

    def __init__(self, batch_size: int, seed: int):
        self.batch_size, self.seed, self.encoder = batch_size, seed, ShapesTextEncoder()

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, step: int):
        return training_batch(step, self.batch_size, self.encoder, self.seed)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # the worker renders; the main process trains


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export(state: dict, command: str) -> None:
    from safetensors.torch import save_file

    WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.half().contiguous() for name, tensor in state["ema"].items()}
    save_file(weights, str(WEIGHTS_FILE), metadata={"format": "pt"})
    card = {
        "model": "FluxTransformer2DModel",
        "config": SHAPES_DIT_CONFIG,
        "parameters": sum(t.numel() for t in weights.values()),
        "dtype": "float16 (EMA weights)",
        "images_seen": state["images_seen"],
        "steps": state["step"],
        "training_minutes": round(state["elapsed"] / 60, 1),
        "final_loss_ema": round(state["loss_ema"], 4),
        "recipe": {key: value for key, value in state["args"].items() if key != "out"},  # the run folder is a machine path
        "command": command,
        "hardware": "2 CPU cores (shared), torch CPU",
    }
    CARD_FILE.write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {WEIGHTS_FILE} ({WEIGHTS_FILE.stat().st_size / 1e6:.1f} MB) and {CARD_FILE}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/shapes-pretrain")
    parser.add_argument("--images", type=int, default=150_000, help="stop after this many images")
    parser.add_argument("--minutes", type=float, default=None, help="stop after this much training time")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--preview-every", type=int, default=1000)
    parser.add_argument("--export", action="store_true", help="write the EMA weights into the package and stop")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"

    model = build_shapes_dit(args.seed)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    state = {"step": 0, "images_seen": 0, "elapsed": 0.0, "loss_ema": 1.0, "args": {k: v for k, v in vars(args).items() if k not in {"export", "threads"}}}
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, weights_only=True)
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved[k] for k in ("step", "images_seen", "elapsed", "loss_ema")})
        print(f"resumed at step {state['step']} ({state['images_seen']} images, {state['elapsed'] / 60:.1f} min)")

    def snapshot():
        return {**state, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}

    if args.export:
        # The recipe and command are those of the run that trained the checkpoint.
        recipe = saved["args"] if checkpoint_path.exists() else state["args"]
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in recipe.items() if v is not None and k != "out")
        export({**state, "args": recipe, "ema": ema.state_dict()}, f"python benchmarks/quality/pretrain.py --out RUN_DIR {flags} --threads 1")
        return 0

    encoder = ShapesTextEncoder()
    batches = torch.utils.data.DataLoader(
        StepBatches(args.batch_size, args.seed),
        batch_size=None,
        sampler=range(state["step"], 10**9),
        num_workers=1,
        prefetch_factor=4,
        worker_init_fn=_one_thread,
    )
    model.train()
    start = time.perf_counter()
    for step, (tokens, ids, text, pooled, sigma, noise) in zip(range(state["step"], 10**9), batches):
        if state["images_seen"] >= args.images or (args.minutes is not None and state["elapsed"] >= args.minutes * 60):
            break
        noisy = (1 - sigma[:, None, None]) * tokens + sigma[:, None, None] * noise
        loss = torch.nn.functional.mse_loss(velocity(model, noisy, ids, text, pooled, sigma), noise - tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for averaged, current in zip(ema.parameters(), model.parameters()):
                averaged.lerp_(current, 1 - decay)
        state["step"] += 1
        state["images_seen"] += args.batch_size
        state["loss_ema"] = 0.98 * state["loss_ema"] + 0.02 * loss.item()
        now = time.perf_counter()
        state["elapsed"] += now - start
        start = now
        if state["step"] % 50 == 0:
            print(f"step {state['step']} images {state['images_seen']} loss {state['loss_ema']:.4f} {state['elapsed'] / 60:.1f} min", flush=True)
        if state["step"] % args.checkpoint_every == 0:
            atomic_save(snapshot(), checkpoint_path)
        if state["step"] % args.preview_every == 0:
            rows = [generate(ema, encoder, PREVIEW_PROMPTS, seed=s, steps=20) for s in range(3)]
            save_grid([torch.stack(list(column)) for column in zip(*rows)], out / f"preview_{state['step']:06d}.png")
            start = time.perf_counter()  # previews are not training time
    atomic_save(snapshot(), checkpoint_path)
    print(f"done: {state['images_seen']} images in {state['elapsed'] / 60:.1f} min, loss {state['loss_ema']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
