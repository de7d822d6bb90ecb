"""DyDiT on the shapes DiT: train routers for dynamic width and tokens at a FLOPs target λ, with an
ordinary LoRA or a timestep LoRA, then sample in hard mode and measure quality, FLOPs and time.

    python benchmarks/quality/dynamic.py --out runs/dynamic --report docs/dynamic_results.md

Every row starts from the same pretrained weights (`--weights`) and trains for the same steps, on
the same batches (pretraining's scenes and captions, drawn from a seed pretraining never used). A
row trains a rank-`--rank` LoRA on the attention projections of every block, plus, where the row
says so, DyDiT's routers on every block (the FLOPs penalty ramps λ from 1 to its target over the
first half of training) and timestep gates on the LoRA ranks. The model is then sampled in hard
mode (closed heads, MLP groups and tokens are not computed) and scored by the attribute critic on
held-out prompts (`readback.py`): how often it draws each prompt's shape, pattern, colours and
background. The sampling FLOPs (`FlopCounter`) and time of each row are measured against the
pretrained model in the same process, right before the row's own measurement.

Results go to `<out>/results.jsonl`, one line per row, so an interrupted run resumes at the next
row; `--report` writes the table and a sample grid (one row per model, `docs/images/dynamic_samples.png`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from blockskip.dynamic import DynamicSettings, apply_dynamic_computation, apply_timestep_lora
from blockskip.estimate.accounting import FlopCounter
from blockskip.shapes import ShapesTextEncoder, generate, load_shapes_dit
from blockskip.shapes.critic import load_critic
from blockskip.shapes.generate import velocity
from blockskip.shapes.grid import save_grid
from blockskip.shapes.personalize import ATTENTION_TARGETS, block_linears

sys.path.insert(0, str(Path(__file__).parent))
from pretrain import PREVIEW_PROMPTS, training_batch  # noqa: E402
from readback import prompts_for, read_back  # noqa: E402

TRAINING_SEED = 4_242  # pretraining runs used seeds 0-3
SCORES = ("shape", "pattern", "colours", "background")


@dataclass(frozen=True)
class Row:
    name: str
    target: float | None  # λ; None: no routers
    adapter: str | None  # "lora", "td-lora" or None: the pretrained model as it is
    router_input: str = "temb"  # what the width routers read: the block's temb, or the timestep alone


ROWS = (
    Row("pretrained", None, None),
    Row("LoRA, no gates", None, "lora"),
    Row("DyDiT λ=0.7 + LoRA", 0.7, "lora"),
    Row("DyDiT λ=0.7 + TD-LoRA", 0.7, "td-lora"),
    Row("DyDiT λ=0.5 + LoRA", 0.5, "lora"),
    Row("DyDiT λ=0.5 + TD-LoRA", 0.5, "td-lora"),
    Row("DyDiT λ=0.5, t-only routers + LoRA", 0.5, "lora", router_input="timestep"),
)


def prepare(base, row: Row, args):
    """A copy of `base` with the row's LoRA, timestep gates and routers; (model, routers handle, trainable)."""
    from peft import LoraConfig

    model = copy.deepcopy(base).requires_grad_(False)
    if row.adapter is None:
        return model, None, []
    model.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=block_linears(model, ATTENTION_TARGETS)))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if row.adapter == "td-lora":
        trainable += list(apply_timestep_lora(model).parameters())
    routers = None
    if row.target is not None:
        settings = DynamicSettings(target=row.target, hold_steps=args.steps // 10, ramp_steps=args.steps // 2,
                                   router_input=row.router_input)
        routers = apply_dynamic_computation(model, settings)
        trainable += list(routers.parameters())
    return model, routers, trainable


def train(model, routers, trainable, args) -> dict:
    encoder = ShapesTextEncoder()
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    started, loss_ema, spent_ema = time.perf_counter(), None, None
    for step in range(args.steps):
        tokens, ids, text, pooled, sigma, noise, _ = training_batch(step, args.batch_size, encoder, TRAINING_SEED, [args.side])
        noisy = (1 - sigma[:, None, None]) * tokens + sigma[:, None, None] * noise
        loss = torch.nn.functional.mse_loss(velocity(model, noisy, ids, text, pooled, sigma), noise - tokens)
        total = loss + routers.flops_loss(step) if routers is not None else loss
        total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_ema = loss.item() if loss_ema is None else 0.98 * loss_ema + 0.02 * loss.item()
        if routers is not None:
            spent = routers.flops_ratio().mean().item()
            spent_ema = spent if spent_ema is None else 0.98 * spent_ema + 0.02 * spent
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1} loss {loss_ema:.4f}" + (f" spent {spent_ema:.2f}" if spent_ema is not None else ""), flush=True)
    return {"train_loss": loss_ema, "train_spent": spent_ema, "train_minutes": (time.perf_counter() - started) / 60}


def sampling_cost(model, encoder, prompts, side: int, routers=None) -> dict:
    """FLOPs and seconds of sampling `prompts` (20 steps, guidance), and the share of the gated
    FLOPs the routers spent at each step (σ from 1 down)."""
    spent = []
    hook = None
    if routers is not None:
        hook = model.register_forward_hook(lambda *_: spent.append(routers.flops_ratio().mean().item()))
    with FlopCounter() as flops:
        generate(model, encoder, prompts, seed=1, steps=20, size=side)
    started = time.perf_counter()
    generate(model, encoder, prompts, seed=1, steps=20, size=side)
    seconds = time.perf_counter() - started
    if hook is not None:
        hook.remove()
    return {"flops": flops.total, "seconds": seconds, "spent_by_step": spent[:20] or None}


def measure(row: Row, base, critic, args, out: Path) -> dict:
    print(f"{row.name}", flush=True)
    model, routers, trainable = prepare(base, row, args)
    result = {"row": row.name, "target": row.target, "adapter": row.adapter, "steps": args.steps if trainable else 0}
    if trainable:
        result |= train(model, routers, trainable, args)
    model.eval()
    if routers is not None:
        routers.hard = True
    encoder = ShapesTextEncoder()
    scenes = prompts_for("held-out", args.prompts)
    result |= read_back(model, critic, encoder, scenes, args.side)
    cost_prompts = PREVIEW_PROMPTS[: args.cost_prompts]
    baseline = sampling_cost(base, encoder, cost_prompts, args.side)  # same process, just before: a fair ratio
    own = sampling_cost(model, encoder, cost_prompts, args.side, routers)
    result |= {"flops_ratio": own["flops"] / baseline["flops"], "time_ratio": own["seconds"] / baseline["seconds"],
               "spent_by_step": own["spent_by_step"]}
    torch.save(generate(model, encoder, PREVIEW_PROMPTS, seed=0, steps=20, size=args.side), out / f"samples_{ROWS.index(row)}.pt")
    print("  " + ", ".join(f"{key} {value:.3f}" for key, value in result.items() if isinstance(value, float)), flush=True)
    return result


def report(results: list[dict], out: Path, path: Path, args) -> None:
    lines = [
        f"Measured by `benchmarks/quality/dynamic.py` ({args.steps} steps, batch {args.batch_size}, rank {args.rank}, "
        f"side {args.side}; {args.prompts} held-out prompts, ± standard error). FLOPs and time: sampling "
        f"{args.cost_prompts} prompts, 20 steps with guidance, in hard mode, against the pretrained model measured in "
        "the same process; 'vs LoRA' divides by the 'LoRA, no gates' row's ratios, so an unmerged LoRA's own cost "
        "cancels; 'spent' is the share of the gated FLOPs the routers opened, averaged over the sampling steps.",
        "",
        "| row | shape | pattern | colours | background | spent | FLOPs (measured) | time (measured) | FLOPs vs LoRA | time vs LoRA | train min |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lora = next((result for result in results if result["row"] == "LoRA, no gates"), None)
    for result in results:
        cells = [f"{result[key]:.2f} ± {math.sqrt(result[key] * (1 - result[key]) / args.prompts):.2f}" for key in SCORES]
        spent = result["spent_by_step"]
        relative = [f"{result[key] / lora[key]:.2f}" if lora and result["adapter"] else "–" for key in ("flops_ratio", "time_ratio")]
        cells += [f"{sum(spent) / len(spent):.2f}" if spent else "1", f"{result['flops_ratio']:.2f}", f"{result['time_ratio']:.2f}",
                  *relative, f"{result.get('train_minutes', 0):.1f}"]
        lines.append(f"| {result['row']} | " + " | ".join(cells) + " |")
    gated = [result for result in results if result["spent_by_step"]]
    if gated:
        lines += ["", "Share of the gated FLOPs spent at each sampling step (σ from 1 to 0, every 4th step):", "",
                  "| row | " + " | ".join(f"step {i + 1}" for i in range(0, 20, 4)) + " |", "|---|" + "---|" * 5]
        for result in gated:
            lines.append(f"| {result['row']} | " + " | ".join(f"{result['spent_by_step'][i]:.2f}" for i in range(0, 20, 4)) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    grid = [torch.load(out / f"samples_{index}.pt", weights_only=True) for index, _ in enumerate(ROWS) if (out / f"samples_{index}.pt").exists()]
    image = path.parent / "images" / "dynamic_samples.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    save_grid(grid, image)
    print(f"wrote {path} and {image}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/dynamic"))
    parser.add_argument("--weights", default=None, help="pretrained shapes DiT (.safetensors with its card); default: the shipped one")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--cost-prompts", type=int, default=6)
    parser.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.jsonl"
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    base, critic = load_shapes_dit(args.weights), load_critic()
    wanted = [ROWS[int(part)] for part in args.rows.split(",")] if args.rows else list(ROWS)
    for row in wanted:
        if any(result["row"] == row.name for result in done):
            continue
        torch.manual_seed(0)  # router initialisation: the same for every row
        result = measure(row, base, critic, args, args.out)
        done.append(result)
        with results_file.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    if args.report:
        order = {row.name: index for index, row in enumerate(ROWS)}
        report(sorted(done, key=lambda result: order[result["row"]]), args.out, args.report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
