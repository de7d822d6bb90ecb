"""`blockskip demo`: personalize the pretrained shapes DiT on a subject it has never seen, three ways.

The embedded default is a small FLUX-architecture model (`FluxTransformer2DModel`, 12 blocks,
~2.5M parameters) pretrained on procedural scenes of 32 to 64 px (see docs/quality.md); the demo
works at the largest side it was pretrained on, 64 px (256 tokens). The subject is a held-out
identity (a shape with a colour, pattern and accent that pretraining never drew) bound to the
token `sks`; five reference images teach it. The runs share the references, the schedule and the
seeds:

- full LoRA: every block trains, at the full 64 px;
- skip: the plan's leading and trailing blocks are skipped with online residuals, at 64 px;
- BlockSkip: the same skip, and each image is cropped at a size set by its noise level and
  trained at half the side, 32 px (DiT-BlockSkip: the most memory saved);
- naive skip: the skip and crops with no residual (the ablation that collapses).

Each LoRA is saved and loaded into a fresh full model with diffusers' `load_lora_adapter`, which
then samples the subject's prompts. The attribute critic scores the samples (docs/quality.md), and
`samples.png` shows them: reference images, then one row per run.

Example (about two minutes on two CPU cores):
    $ blockskip demo --out blockskip-demo
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..estimate.memory import format_bytes
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip import describe_plan

DEFAULT_DEMO_PLAN = {"skip": {"ratio": 0.3}, "residuals": {"mode": "online"}, "offload": "cpu"}


@dataclass
class RunResult:
    name: str
    memory_bytes: int | None
    seconds_per_step: float | None
    final_loss: float | None
    subject_accuracy: float
    subject_similarity: float
    prompt_adherence: float


def format_table(results: list[RunResult]) -> str:
    baseline = next(r for r in results if r.memory_bytes)
    header = (
        f"{'run':<22} {'memory':>10} {'ratio':>6} {'s/step':>7} {'ratio':>6} {'loss':>6} "
        f"{'subject acc.':>12} {'subject sim.':>12} {'prompt adh.':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.memory_bytes:
            cost = (
                f"{format_bytes(r.memory_bytes):>10} {r.memory_bytes / baseline.memory_bytes:>6.2f} "
                f"{r.seconds_per_step:>7.3f} {r.seconds_per_step / baseline.seconds_per_step:>6.2f} {r.final_loss:>6.3f}"
            )
        else:
            cost = f"{'–':>10} {'':>6} {'–':>7} {'':>6} {'–':>6}"
        lines.append(f"{r.name:<22} {cost} {r.subject_accuracy:>12.2f} {r.subject_similarity:>12.3f} {r.prompt_adherence:>11.2f}")
    return "\n".join(lines)


def run_demo(
    steps: int = 150,
    plan: BlockSkipPlan | None = None,
    out: str | Path = "blockskip-demo",
    seed: int = 0,
    rank: int = 8,
    subject: int = 0,
    work_dir: str | Path | None = None,
) -> list[RunResult]:
    """Personalize the shapes DiT with full LoRA, BlockSkip and naive skip; print and return the table.

    The samples and the BlockSkip LoRA go to `out`. The other runs train in scratch folders that
    are removed, or in `work_dir/<run>` when `work_dir` is given.
    """
    from . import HELD_OUT_SUBJECTS, ShapesTextEncoder, generate, load_shapes_dit, pretrained_sides
    from .critic import load_critic
    from .evaluation import score_samples, subject_prompts
    from .grid import save_grid
    from .personalize import Recipe, reference_set, train_subject_lora

    plan = plan or BlockSkipPlan.from_dict(DEFAULT_DEMO_PLAN)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, critic, encoder = load_shapes_dit(), load_critic(), ShapesTextEncoder()
    effect = describe_plan(model, plan)  # the runs bank into their own folders, so the plan's bank is never opened
    spans = ", ".join(f"{span['position']} {span['list_name']}[{span['start']}:{span['stop']}]" for span in effect["spans"])
    summary = (
        f"{effect['model']}: {effect['num_blocks']} blocks, skipping {effect['leading']} leading + {effect['trailing']} trailing "
        f"({effect['source']}); spans: {spans}; residuals: {plan.residuals.mode}; offload: {plan.offload}"
    )

    chosen = HELD_OUT_SUBJECTS[subject]
    side = max(pretrained_sides())
    references, captions = reference_set(chosen, seed=seed, size=side)
    prompts = subject_prompts(chosen)
    skip = plan.to_dict()["skip"]
    mode = plan.residuals.mode
    runs = [
        ("pretrained, no LoRA", None, None),
        (f"full LoRA @{side}", Recipe("full LoRA", resolution="full"), None),
        (f"skip ({mode}) @{side}", Recipe("skip only", resolution="full", skip=skip, residuals=mode), None),
        (f"BlockSkip ({mode}) @{side // 2}", Recipe("BlockSkip", skip=skip, residuals=mode), out),
        (f"naive skip (no Δ) @{side // 2}", Recipe("naive skip", skip=skip, residuals="none"), None),
    ]
    results, grid, reload_error = [], [references], None
    for name, recipe, work in runs:
        if work is None and work_dir is not None and recipe is not None:
            work = Path(work_dir) / recipe.name.replace(" ", "-")
        print(f"training {name} ..." if recipe else f"sampling {name} ...", flush=True)
        stats = {}
        tuned = model
        if recipe is not None:
            tuned, stats = train_subject_lora(
                model, recipe, references, captions, steps=steps, rank=rank, seed=seed, work_dir=work
            )
            reload_error = stats.get("reload_error", reload_error)
        samples = generate(tuned, encoder, [p.text for p in prompts], seed=1000 + seed, size=side)
        grid.append(samples)
        scores = score_samples(critic, samples, prompts, references, chosen)
        results.append(
            RunResult(name, stats.get("memory_bytes"), stats.get("seconds_per_step"), stats.get("final_loss"),
                      scores["subject_accuracy"], scores["subject_similarity"], scores["prompt_adherence"])
        )
    save_grid(grid, out / "samples.png", scale=max(1, 128 // side))

    identity = f"{chosen.colour} {chosen.shape}, {chosen.pattern} with {chosen.accent}"
    print(f"\nblockskip demo: {summary}")
    print(f"subject {chosen.name} ({identity}; never drawn in pretraining), 5 references at {side} px as 'sks {chosen.shape}', "
          f"{steps} steps, batch 4, LoRA rank {rank}")
    print("memory = weights in the module tree + measured peak of a step; scores by the attribute critic on 6 prompts\n")
    print(format_table(results))
    print(f"\nSamples: {out / 'samples.png'} (row 1: references; then one row per run, in table order).")
    lora_dir = out / "lora"
    if lora_dir.exists():
        print(f"Saved the BlockSkip LoRA and its plan to {lora_dir}/ ({', '.join(sorted(p.name for p in lora_dir.iterdir()))}).")
    if reload_error is not None:
        status = "ok" if reload_error < 1e-4 else "MISMATCH"
        print(f"Reloaded into a fresh full model with load_lora_adapter: output differs from the trained skipped model by {reload_error:.2e} (relative) — {status}.")
        if status != "ok":
            raise SystemExit("the saved LoRA does not reproduce the trained model")
    return results
