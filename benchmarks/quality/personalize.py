"""The personalization benchmark: DiT-BlockSkip's quality claims, measured on the shapes DiT.

    python benchmarks/quality/personalize.py --out runs/quality            # all rows, 10 subjects, 64 px
    python benchmarks/quality/personalize.py --out runs/quality --report docs/quality_results.md

For every held-out subject (an identity pretraining never drew, bound to the token `sks`) and
seed, each row trains a LoRA from the same five references with the same schedule (samples, noise
levels, noise, steps), loads it into the full model as a user would, samples the subject's six
prompts, and scores the samples with the attribute critic (subject similarity ~ DINO, image
similarity ~ CLIP-I, prompt adherence ~ CLIP-T, and subject accuracy: the critic reads the exact
identity). Peak memory (weights in the module tree + the measured peak of a step) and time per
step are measured in the same process, and reported as ratios to the full-LoRA row.

Results go to `<out>/results_<first>_<last>.jsonl`, one line per (row, subject, seed), so an
interrupted run resumes where it stopped. `--workers N` splits the subjects between N processes
of one thread each (on a two-core machine, 2 workers finish in about half the time). `--report`
writes the table of the `--seeds` given (mean ± std over subjects and seeds), a sample grid per row (`<report dir>/images/quality_<row>.png`),
a bar chart of the four scores per row with ± std whiskers (`quality_scores.png`) and measured memory
against subject similarity (`quality_memory_vs_similarity.png`), and the selection tool's masking
profile (`quality_selection_profile.png`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from blockskip.shapes import (
    HELD_OUT_SUBJECTS,
    ShapesTextEncoder,
    generate,
    load_shapes_dit,
    pretrained_sides,
)
from blockskip.shapes.critic import critic_view, load_critic
from blockskip.shapes.evaluation import score_samples, subject_prompts
from blockskip.shapes.grid import save_grid
from blockskip.shapes.personalize import Recipe, reference_set, train_subject_lora

sys.path.insert(0, str(Path(__file__).parent))
from plots import memory_quality_scatter, score_bars  # noqa: E402
from targets import target_checks  # noqa: E402

METRICS = ("subject_similarity", "image_similarity", "prompt_adherence", "subject_accuracy")


def rows(selected_split: tuple[int, int] | None, side: int = 32) -> list[Recipe | None]:
    """The table's rows for references of `side` px; "@" names the training side (half: `side // 2`)."""
    half = side // 2
    recipes: list[Recipe | None] = [
        None,  # the pretrained model with no LoRA: how much of the subject the prompt alone gives
        Recipe(f"full LoRA @{side}", resolution="full"),
        Recipe(f"plain resize @{half}", resolution="resize"),
        Recipe(f"dynamic patches @{half}", resolution="patches"),
    ]
    for mode in ("cached", "online", "none"):
        for ratio in (0.3, 0.4, 0.5):
            recipes.append(Recipe(f"skip {ratio:.0%} {mode}", skip={"ratio": ratio}, residuals=mode))
    # Skipping alone, at full resolution: separates what the skip costs from what half-side training costs.
    recipes += [
        Recipe(f"skip 30% online @{side}", resolution="full", skip={"ratio": 0.3}),
        Recipe(f"skip 50% online @{side}", resolution="full", skip={"ratio": 0.5}),
        Recipe(f"skip 50% none @{side}", resolution="full", skip={"ratio": 0.5}, residuals="none"),
    ]
    recipes += [
        Recipe("skip first 6 only (50%)", skip={"leading": 6, "trailing": 0}),
        Recipe("skip last 6 only (50%)", skip={"leading": 0, "trailing": 6}),
    ]
    if selected_split is not None:
        leading, trailing = selected_split
        recipes.append(Recipe(f"selection tool 50% ({leading}+{trailing})", skip={"leading": leading, "trailing": trailing}))
    return recipes


def row_name(recipe: Recipe | None) -> str:
    return "pretrained, no LoRA" if recipe is None else recipe.name


class CriticEmbedder:
    """The attribute critic's image features as a selection-probe embedder."""

    name, wants = "critic", "images"

    def __init__(self, critic):
        self.critic = critic

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.critic(images * 2 - 1)["image"]


def selection_split(model, critic, out: Path, side: int = 32) -> tuple[int, int]:
    """Run `select_blocks` on the pretrained model (critic features as the metric); cache the profile."""
    from blockskip.selection.profile import SelectionProfile
    from blockskip.selection.select import best_skip, select_blocks
    from blockskip.shapes.model import PIXELS_PER_TOKEN, image_ids, text_ids, unpack
    from blockskip.training.sampling import EulerSampler

    path = out / "selection_profile.json"
    if path.exists():
        profile = SelectionProfile.load(path)
    else:
        encoder = ShapesTextEncoder()
        prompts = [
            "large red striped yellow circle on navy",
            "large blue checkered white square small green solid cross on beige",
            "large magenta twotone cyan triangle on olive",
            "small yellow solid ring large white striped black diamond on speckled gray",
        ]
        inputs, tokens_per_side = [], side // PIXELS_PER_TOKEN
        for index, prompt in enumerate(prompts):
            text, pooled = encoder([prompt])
            noise = torch.randn(1, tokens_per_side**2, 3 * PIXELS_PER_TOKEN**2, generator=torch.Generator().manual_seed(index))
            ids = image_ids(tokens_per_side, tokens_per_side)
            inputs.append(dict(hidden_states=noise, encoder_hidden_states=text, pooled_projections=pooled, img_ids=ids, txt_ids=text_ids(text.shape[1])))
        profile = select_blocks(
            model, inputs=inputs, window=4, max_skip=7, embedder=CriticEmbedder(critic),
            sampler=EulerSampler(steps=12), decode=lambda tokens: (critic_view(unpack(tokens, side, side)) + 1) / 2, progress=False,
        )
        profile.save(path)
    split = best_skip(profile, 0.5)
    return split.leading, split.trailing


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("results_*.jsonl")) for line in path.read_text().splitlines()]


def _spawn_workers(args, argv: list[str]) -> None:
    """Run the subjects in `args.workers` child processes, one thread each, and wait for them."""
    import subprocess

    bounds = [args.first_subject + round(i * args.subjects / args.workers) for i in range(args.workers + 1)]
    children = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        if last > first:
            command = [sys.executable, __file__, *argv, "--workers", "1", "--threads", "1", "--first-subject", str(first), "--subjects", str(last - first)]
            children.append(subprocess.Popen(command))
    failed = [child.args for child in children if child.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed")


def run(args, argv: list[str]) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = _records(out)
    sides = {r.get("side", 32) for r in records}
    if sides - {args.side}:
        raise SystemExit(f"{out} holds results at {sorted(sides)} px; this run is at {args.side} px. Use another --out.")
    model, critic, encoder = load_shapes_dit(args.checkpoint), load_critic(), ShapesTextEncoder()
    split = selection_split(model, critic, out, args.side) if not args.no_selection else None
    if args.workers > 1:
        _spawn_workers(args, argv)
        return
    subjects = HELD_OUT_SUBJECTS[args.first_subject : args.first_subject + args.subjects]
    results_path = out / f"results_{args.first_subject}_{args.first_subject + len(subjects)}.jsonl"
    done = {(r["row"], r["subject"], r["seed"]) for r in records}
    recipes = [r for r in rows(split, args.side) if not args.rows or any(word in row_name(r) for word in args.rows)]
    total = len(recipes) * len(subjects) * len(args.seeds)
    count = 0
    for seed in args.seeds:
        for subject in subjects:
            references, captions = reference_set(subject, count=args.references, seed=seed, size=args.side)
            prompt_count = len(subject_prompts(subject))
            prompts = subject_prompts(subject) * args.samples_per_prompt
            for recipe in recipes:
                count += 1
                name = row_name(recipe)
                if (name, subject.name, seed) in done:
                    continue
                start = time.perf_counter()
                if recipe is None:
                    tuned, stats = model, {}
                else:
                    tuned, stats = train_subject_lora(
                        model, recipe, references, captions, steps=args.steps, batch_size=args.batch_size,
                        rank=args.rank, lr=args.lr, seed=seed,
                    )
                samples = generate(tuned, encoder, [p.text for p in prompts], seed=1000 + seed, steps=args.sample_steps, guidance=args.guidance, size=args.side)
                scores = score_samples(critic, samples, prompts, references, subject)
                record = {"row": name, "subject": subject.name, "seed": seed, "side": args.side, **scores, **stats}
                sample_dir = out / "samples"
                sample_dir.mkdir(exist_ok=True)
                torch.save(samples[:prompt_count].half(), sample_dir / f"{_slug(name)}__{subject.name}__{seed}.pt")
                with results_path.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"[{count}/{total}] {name:<28} {subject.name} seed {seed}: "
                      + " ".join(f"{k} {scores[k]:.3f}" for k in METRICS) + f" ({time.perf_counter() - start:.0f} s)", flush=True)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def report(args) -> None:
    out = Path(args.out)
    records = [r for r in _records(out) if r["seed"] in args.seeds]
    names = list(dict.fromkeys(record["row"] for record in records))
    by_row = {name: [r for r in records if r["row"] == name] for name in names}
    baseline = next((by_row[name] for name in names if name.startswith("full LoRA")), [])
    base_memory = statistics.mean(r["memory_bytes"] for r in baseline) if baseline else None
    base_time = statistics.mean(r["seconds_per_step"] for r in baseline) if baseline else None
    subjects = sorted({r["subject"] for r in records})
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"{len(subjects)} subjects × {len(seeds)} seed(s); mean ± std over subjects and seeds. "
        "Memory and time are ratios to the full-LoRA row measured in the same run.",
        "",
        "| row | subject sim. (DINO-like) | image sim. (CLIP-I-like) | prompt adherence (CLIP-T-like) | subject accuracy | memory | time/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        rows_ = by_row[name]
        cells = [_mean_std([r[m] for r in rows_]) for m in METRICS]
        if "memory_bytes" in rows_[0] and base_memory:
            memory = f"{statistics.mean(r['memory_bytes'] for r in rows_) / base_memory:.2f}×"
            step = f"{statistics.mean(r['seconds_per_step'] for r in rows_) / base_time:.2f}×"
        else:
            memory = step = "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {memory} | {step} |")
    side = records[0].get("side", 32)
    checks = target_checks(by_row, side)
    if checks:
        lines += ["", "Targets (issue 16), measured on these records:", "", *checks]
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    image_dir = report_path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    charted = {}
    for name in names:
        rows_ = by_row[name]
        spread = {m: (statistics.mean(r[m] for r in rows_), statistics.stdev(r[m] for r in rows_) if len(rows_) > 1 else 0.0) for m in METRICS}
        memory = statistics.mean(r["memory_bytes"] for r in rows_) / base_memory if "memory_bytes" in rows_[0] and base_memory else None
        charted[name] = {"scores": spread, "memory": memory}
    score_bars(charted).save(image_dir / "quality_scores.png")
    memory_quality_scatter(charted).save(image_dir / "quality_memory_vs_similarity.png")
    shown = [subject for subject in HELD_OUT_SUBJECTS if subject.name in subjects][: args.grid_subjects]
    references = {subject.name: reference_set(subject, count=args.references, seed=seeds[0], size=side)[0][:3] for subject in shown}
    for name in names:
        grid_rows = []
        for subject in shown:
            path = out / "samples" / f"{_slug(name)}__{subject.name}__{seeds[0]}.pt"
            if path.exists():
                grid_rows.append(torch.cat([references[subject.name], torch.load(path, weights_only=True).float()]))
        if grid_rows:
            save_grid(grid_rows, image_dir / f"quality_{_slug(name)}.png", scale=max(1, 128 // side))
    if (out / "selection_profile.json").exists():
        from blockskip.selection.plotting import save_profile_plot
        from blockskip.selection.profile import SelectionProfile, best_skip

        profile = SelectionProfile.load(out / "selection_profile.json")
        split = best_skip(profile, 0.5)
        save_profile_plot(profile, image_dir / "quality_selection_profile.png", split=(split.leading, split.trailing))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--checkpoint", default=None, help="shapes DiT weights (default: the shipped checkpoint)")
    parser.add_argument("--side", type=int, default=None,
                        help="reference and sampling side in px; rows train at it and at half (default: the largest side the model was pretrained on)")
    parser.add_argument("--subjects", type=int, default=10, help="how many held-out subjects (of 10)")
    parser.add_argument("--first-subject", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes to split the subjects between")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="*", help="only rows whose name contains one of these words")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-selection", action="store_true", help="leave out the selection-tool row")
    parser.add_argument("--report", help="write the markdown table here (and sample grids beside it), then stop")
    parser.add_argument("--grid-subjects", type=int, default=4)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.side = args.side or max(pretrained_sides(args.checkpoint))
    if args.report:
        report(args)
    else:
        run(args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
