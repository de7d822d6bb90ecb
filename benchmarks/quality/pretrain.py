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

Multi-resolution, as FLUX is pretrained: `--sides 32,48,64` draws each step's side (weighted by
`--side-weights`), so every side the benchmark trains or samples at is in distribution; position
ids are the token grid of that side, as FLUX's are of its latent. `--crop-fraction f` makes a share
f of the batches crops: the scene rendered up to 2× larger and a window of the step's side cut out
of it, what a timestep-aware crop resized to a low side shows the model. `--config '{"num_attention_heads": 4}'`
changes the architecture; `--object-weights 0.6,0.25,0.15` draws more single-object scenes (the
shape of a lone large object is most of its loss signal); `--device cuda --bf16` trains on a GPU. With the defaults (one side 32,
no crops) the batches are exactly those of the first pretraining run.

Making outlines count: a shape differs from a blob of its colours in a few percent of the pixels, so
plain MSE spends almost all its gradient on colours and patterns (docs/quality.md, "Why the shapes
do not form"). `--silhouette-weight w` counts the pixels near an object's outline 1 + w times
(weights normalised to mean 1), and `--sigma-shift s` moves the logit-normal σ toward the noisy
end, where the outline is decided, as FLUX and SD3 shift theirs. Neither changes the images drawn.

Longer than one sitting: `--init-from blockskip/shapes/weights/shapes-dit.safetensors` starts a
new run from exported weights (model and EMA; the optimizer starts afresh), under another `--seed`
so its batches are new. The exported card then adds the earlier runs' images and minutes to this
run's and lists every run's command under "runs".
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
from blockskip.shapes.model import PIXELS_PER_TOKEN, SHAPES_DIT_CONFIG, WEIGHTS_FILE
from blockskip.shapes.scenes import caption, coverage

ROLES = ("size", "colour", "pattern", "accent", "texture")
PREVIEW_PROMPTS = [
    "large red solid circle on navy",
    "large blue striped white square on beige",
    "large yellow checkered black triangle on gray",
    "large green twotone magenta ring on maroon",
    "small white solid cross large cyan solid diamond on olive",
    "large magenta solid square small yellow solid circle on speckled teal",
]


def step_view(generator: torch.Generator, sides: list[int], weights: list[float] | None, crop_fraction: float) -> tuple[int, int]:
    """(side, rendered side) of one step's batch: the side it trains at and, for a crop, the larger
    side its scenes are rendered at before a window of `side` is cut out."""
    side = sides[0]
    if len(sides) > 1:  # drawn only when there is a choice, so one-side runs keep their batches
        chances = torch.tensor([float(w) for w in weights] if weights else [1.0] * len(sides))
        side = sides[int(torch.multinomial(chances, 1, generator=generator))]
    rendered = side
    if crop_fraction and torch.rand((), generator=generator) < crop_fraction:
        zoom = 1 + float(torch.rand((), generator=generator))
        rendered = max(side + PIXELS_PER_TOKEN, round(side * zoom / PIXELS_PER_TOKEN) * PIXELS_PER_TOKEN)
    return side, rendered


def _window(image: torch.Tensor, side: int, generator: torch.Generator) -> torch.Tensor:
    spare = image.shape[-1] - side
    top, left = (int(torch.randint(0, spare + 1, (), generator=generator)) for _ in range(2))
    return image[:, top : top + side, left : left + side]


def scene_objects(generator: torch.Generator, object_weights: list[float] | None) -> int | None:
    """How many objects a scene gets: drawn from `object_weights` (for 1, 2, 3 objects) when given,
    else None, which leaves the count to `sample_scene` (30/40/30%) and draws nothing extra."""
    if object_weights is None:
        return None
    return int(torch.multinomial(torch.tensor(object_weights), 1, generator=generator)) + 1


def silhouette_weights(silhouettes: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-token loss weights (B, N, 48) that count pixels near an object's outline 1 + `weight`
    times, the rest once; normalised to mean 1 so the loss keeps its scale. `silhouettes` is the
    scenes' coverage, (B, 1, H, W) in [0, 1]; a pixel is near an outline when its 3×3 neighbourhood
    holds both covered and uncovered pixels."""
    dilated = torch.nn.functional.max_pool2d(silhouettes, 3, 1, 1)
    eroded = -torch.nn.functional.max_pool2d(-silhouettes, 3, 1, 1)
    weights = 1 + weight * (dilated - eroded)
    weights = weights / weights.mean()
    return pack(weights.expand(-1, 3, -1, -1))[0]


def shifted(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ moved toward 1 by `shift` as FLUX and SD3 shift their schedules (shift 1: unchanged)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def training_batch(step: int, batch_size: int, encoder: ShapesTextEncoder, seed: int,
                   sides: list[int] = (32,), side_weights: list[float] | None = None, crop_fraction: float = 0.0,
                   object_weights: list[float] | None = None, silhouette_weight: float = 0.0, sigma_shift: float = 1.0):
    """One step's batch: tokens, ids, text, pooled, σ, noise and per-token loss weights (a scalar
    one when `silhouette_weight` is 0). The random draws do not depend on the weighting options,
    so a run with them sees the same images as one without."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    side, rendered = step_view(generator, list(sides), side_weights, crop_fraction)
    scenes = [sample_scene(generator, objects=scene_objects(generator, object_weights)) for _ in range(batch_size)]
    prompts = []
    for scene in scenes:
        if torch.rand((), generator=generator) < 0.1:
            prompts.append("")
            continue
        dropped = frozenset(role for role in ROLES if torch.rand((), generator=generator) < 0.15)
        prompts.append(caption(scene, drop=dropped))
    images = torch.stack([render(scene, rendered) for scene in scenes])
    if silhouette_weight:
        images = torch.cat([images, torch.stack([coverage(scene, rendered) for scene in scenes])], dim=1)
    if rendered != side:
        images = torch.stack([_window(image, side, generator) for image in images])
    weights = silhouette_weights(images[:, 3:], silhouette_weight) if silhouette_weight else torch.ones(())
    tokens, ids = pack(images[:, :3])
    text, pooled = encoder(prompts)
    sigma = shifted(torch.sigmoid(torch.randn(batch_size, generator=generator)), sigma_shift)
    noise = torch.randn(tokens.shape, generator=generator)
    return tokens, ids, text, pooled, sigma, noise, weights


class StepBatches(torch.utils.data.Dataset):
    """Batch number `step` of the run; a DataLoader worker renders the next batches while the model trains."""

    def __init__(self, batch_size: int, seed: int, sides: list[int], side_weights: list[float] | None, crop_fraction: float,
                 object_weights: list[float] | None = None, silhouette_weight: float = 0.0, sigma_shift: float = 1.0):
        self.batch_size, self.seed, self.encoder = batch_size, seed, ShapesTextEncoder()
        self.sides, self.side_weights, self.crop_fraction = sides, side_weights, crop_fraction
        self.object_weights, self.silhouette_weight, self.sigma_shift = object_weights, silhouette_weight, sigma_shift

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, step: int):
        return training_batch(step, self.batch_size, self.encoder, self.seed, self.sides, self.side_weights, self.crop_fraction,
                              self.object_weights, self.silhouette_weight, self.sigma_shift)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # the worker renders; the main process trains


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def earlier_runs(weights: Path) -> list[dict]:
    """The runs that trained exported `weights`, oldest first, from the card beside them."""
    card = json.loads(weights.with_suffix(".json").read_text())
    if "runs" in card:
        return card["runs"]
    return [{key: card[key] for key in ("command", "steps", "images_seen", "training_minutes", "hardware")}]


def export(state: dict, command: str, weights_file: Path = WEIGHTS_FILE) -> None:
    from safetensors.torch import save_file

    earlier = state.get("earlier_runs", [])
    card_file = weights_file.with_suffix(".json")
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    weights = {name: tensor.half().contiguous() for name, tensor in state["ema"].items()}
    save_file(weights, str(weights_file), metadata={"format": "pt"})
    card = {
        "model": "FluxTransformer2DModel",
        "config": {**SHAPES_DIT_CONFIG, **(state["args"].get("config") or {})},
        "parameters": sum(t.numel() for t in weights.values()),
        "dtype": "float16 (EMA weights)",
        "images_seen": state["images_seen"] + sum(run["images_seen"] for run in earlier),
        "steps": state["step"] + sum(run["steps"] for run in earlier),
        "training_minutes": round(state["elapsed"] / 60 + sum(run["training_minutes"] for run in earlier), 1),
        "final_loss_ema": round(state["loss_ema"], 4),
        "recipe": {key: value for key, value in state["args"].items() if key != "out"},  # the run folder is a machine path
        "command": command,
        "hardware": state.get("hardware", "2 CPU cores (shared), torch CPU"),
    }
    if earlier:
        this_run = {"command": command, "steps": state["step"], "images_seen": state["images_seen"],
                    "training_minutes": round(state["elapsed"] / 60, 1), "hardware": card["hardware"]}
        card["runs"] = [*earlier, this_run]
    card_file.write_text(json.dumps(card, indent=2) + "\n")
    print(f"exported {weights_file} ({weights_file.stat().st_size / 1e6:.1f} MB) and {card_file}")


def _sides(text: str) -> list[int]:
    sides = [int(part) for part in text.split(",")]
    if any(side < PIXELS_PER_TOKEN or side % PIXELS_PER_TOKEN for side in sides):
        raise argparse.ArgumentTypeError(f"sides must be positive multiples of {PIXELS_PER_TOKEN}, got {text}")
    return sides


def _weights(text: str) -> list[float]:
    weights = [float(part) for part in text.split(",")]
    if any(not weight >= 0 for weight in weights) or not sum(weights) > 0:
        raise argparse.ArgumentTypeError(f"weights must be non-negative with a positive sum, got {text}")
    return weights


def _architecture(overrides: dict | None) -> str:
    return json.dumps({**SHAPES_DIT_CONFIG, **(overrides or {})}, sort_keys=True)  # tuples and lists alike


def _flag(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return "'" + json.dumps(value) + "'"
    return str(value)


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
    parser.add_argument("--sides", type=_sides, default=[32], help="training sides in px, multiples of 4, comma-separated")
    parser.add_argument("--side-weights", type=_weights, default=None, help="relative chance of each side (default: equal)")
    parser.add_argument("--crop-fraction", type=float, default=0.0, help="share of batches that are zoomed-in crops")
    parser.add_argument("--object-weights", type=_weights, default=None,
                        help="relative chance of 1, 2 and 3 objects per scene (default: sample_scene's 30/40/30%%)")
    parser.add_argument("--silhouette-weight", type=float, default=0.0,
                        help="count pixels near object outlines 1 + this many times in the loss (default 0: plain MSE)")
    parser.add_argument("--sigma-shift", type=float, default=1.0, help="shift the logit-normal σ toward 1, as FLUX does (default 1: none)")
    parser.add_argument("--config", type=json.loads, default=None, help="JSON overrides of the architecture")
    parser.add_argument("--init-from", default=None, help="start from these exported weights (.safetensors with its card)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU)")
    parser.add_argument("--export", action="store_true", help="write the EMA weights into the package and stop")
    parser.add_argument("--export-to", type=Path, default=WEIGHTS_FILE, help="with --export: another .safetensors path (its card beside it)")
    args = parser.parse_args(argv)
    if args.side_weights is not None and len(args.side_weights) != len(args.sides):
        parser.error(f"--side-weights gives {len(args.side_weights)} weights for {len(args.sides)} sides")
    if args.object_weights is not None and len(args.object_weights) != 3:
        parser.error(f"--object-weights gives {len(args.object_weights)} weights; it needs 3 (for 1, 2 and 3 objects)")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = out / "checkpoint.pt"

    device = torch.device(args.device)
    model = build_shapes_dit(args.seed, args.config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads, torch CPU"
    recorded = {k: v for k, v in vars(args).items() if k not in {"export", "export_to", "threads", "device", "bf16"}}
    state = {"step": 0, "images_seen": 0, "elapsed": 0.0, "loss_ema": 1.0, "args": recorded, "hardware": hardware}
    if args.init_from and not checkpoint_path.exists():
        from safetensors.torch import load_file

        weights = Path(args.init_from)
        card_config = json.loads(weights.with_suffix(".json").read_text())["config"]
        if _architecture(card_config) != _architecture(args.config):
            parser.error(f"{weights} was trained with config {json.dumps(card_config)}; pass its differences from the default as --config")
        initial = {name: tensor.float() for name, tensor in load_file(str(weights)).items()}
        model.load_state_dict(initial)
        ema.load_state_dict(initial)
        state["earlier_runs"] = earlier_runs(weights)
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, weights_only=True, map_location=device)
        if saved["args"].get("config") != args.config and not args.export:
            parser.error(f"{checkpoint_path} was trained with --config {json.dumps(saved['args'].get('config'))}; resume with it")
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update({k: saved[k] for k in ("step", "images_seen", "elapsed", "loss_ema")})
        state["earlier_runs"] = saved.get("earlier_runs", [])
        if saved.get("hardware", hardware) != hardware:
            state["hardware"] = f"{saved['hardware']}, then {hardware}"
        print(f"resumed at step {state['step']} ({state['images_seen']} images, {state['elapsed'] / 60:.1f} min)")

    def snapshot():
        return {**state, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict()}

    if args.export:
        # The recipe and command are those of the run that trained the checkpoint.
        recipe = saved["args"] if checkpoint_path.exists() else state["args"]
        flags = " ".join(f"--{k.replace('_', '-')} {_flag(v)}" for k, v in recipe.items() if v is not None and k != "out")
        export({**state, "args": recipe, "ema": ema.state_dict()}, f"python benchmarks/quality/pretrain.py --out RUN_DIR {flags}",
               args.export_to)
        return 0

    encoder = ShapesTextEncoder()
    batches = torch.utils.data.DataLoader(
        StepBatches(args.batch_size, args.seed, args.sides, args.side_weights, args.crop_fraction, args.object_weights,
                    args.silhouette_weight, args.sigma_shift),
        batch_size=None,
        sampler=range(state["step"], 10**9),
        num_workers=1,
        prefetch_factor=4,
        worker_init_fn=_one_thread,
    )
    model.train()
    start = time.perf_counter()
    for step, (tokens, ids, text, pooled, sigma, noise, weights) in zip(range(state["step"], 10**9), batches):
        if state["images_seen"] >= args.images or (args.minutes is not None and state["elapsed"] >= args.minutes * 60):
            break
        tokens, ids, text, pooled, sigma, noise, weights = (
            t.to(device, non_blocking=True) for t in (tokens, ids, text, pooled, sigma, noise, weights))
        noisy = (1 - sigma[:, None, None]) * tokens + sigma[:, None, None] * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            predicted = velocity(model, noisy, ids, text, pooled, sigma)
        loss = (weights * (predicted.float() - (noise - tokens)) ** 2).mean()
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
            rows = [generate(ema, encoder, PREVIEW_PROMPTS, seed=s, steps=20, size=max(args.sides)) for s in range(3)]
            save_grid([torch.stack(list(column)) for column in zip(*rows)], out / f"preview_{state['step']:06d}.png")
            start = time.perf_counter()  # previews are not training time
    atomic_save(snapshot(), checkpoint_path)
    print(f"done: {state['images_seen']} images in {state['elapsed'] / 60:.1f} min, loss {state['loss_ema']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
