"""Forward-only personalization against backpropagation on the shapes world (issue 17).

    python benchmarks/quality/forward_only.py --out runs/forward-only --seeds 0 1 --subjects 5 --threads 1 &
    python benchmarks/quality/forward_only.py --out runs/forward-only --seeds 0 1 --subjects 5 --first-subject 5 --threads 1
    python benchmarks/quality/forward_only.py --out runs/forward-only --seeds 0 1 --report docs/zeroth_order_results.md

For every held-out subject and seed (the quality table's references, prompts and sampling), rows:

- BP LoRA @64 and BlockSkip (skip 30% online + dynamic patches @32), trained by backpropagation
  for `--steps` steps as in the quality table;
- ZO LoRA, BP-low / ZO-high, BP-low / ZO-high + skip 30%, and ZO textual inversion
  (`blockskip.shapes.forward_only`), trained for `--zo-steps` steps and scored three times: at
  equal steps (`--steps`), at equal wall time (the BP LoRA row's training time for the same
  subject and seed, measured in this process) and at the end.

Scores are the critic's four (docs/quality.md); memory is the weights in the module tree plus the
measured peak of a step (for BP-low / ZO-high the larger of its two kinds), as a ratio to BP LoRA.
Results go to `<out>/results_<first>_<last>.jsonl`, one line per (row, checkpoint, subject, seed),
so two processes can split the subjects (as above) and a rerun resumes. `--report` writes the table (mean ± std) to the given markdown file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from blockskip.shapes import HELD_OUT_SUBJECTS, ShapesTextEncoder, generate, load_shapes_dit, pretrained_sides
from blockskip.shapes.critic import load_critic
from blockskip.shapes.evaluation import score_samples, subject_prompts
from blockskip.shapes.forward_only import ForwardOnlyRecipe, train_forward_only
from blockskip.shapes.personalize import Recipe, reference_set, train_subject_lora

METRICS = ("subject_similarity", "image_similarity", "prompt_adherence", "subject_accuracy")
BP_ROWS = (("BP LoRA", Recipe("BP LoRA", resolution="full")), ("BlockSkip 30% online", Recipe("BlockSkip", skip={"ratio": 0.3})))
ZO_ROWS = (
    ForwardOnlyRecipe("ZO LoRA", method="zo"),
    ForwardOnlyRecipe("BP-low / ZO-high", method="selective"),
    ForwardOnlyRecipe("BP-low / ZO-high + skip 30%", method="selective", skip={"ratio": 0.3}),
    ForwardOnlyRecipe("ZO textual inversion", method="textual_inversion"),
)


class Scorer:
    def __init__(self, args, subject, references, seed):
        self.critic, self.subject, self.references, self.seed, self.args = load_critic(), subject, references, seed, args
        self.prompts = subject_prompts(subject) * args.samples_per_prompt

    def __call__(self, model, encoder) -> dict:
        samples = generate(model, encoder, [p.text for p in self.prompts], seed=1000 + self.seed, steps=self.args.sample_steps,
                           guidance=self.args.guidance, size=self.args.side)
        return score_samples(self.critic, samples, self.prompts, self.references, self.subject)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("results_*.jsonl")) for line in path.read_text().splitlines()]


def _write(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = HELD_OUT_SUBJECTS[args.first_subject : args.first_subject + args.subjects]
    results = out / f"results_{args.first_subject}_{args.first_subject + len(subjects)}.jsonl"
    records = _records(out)
    done = {(r["row"], r["subject"], r["seed"]) for r in records}
    model = load_shapes_dit(args.checkpoint)
    names = [name for name, _ in BP_ROWS] + [recipe.name for recipe in ZO_ROWS]
    wanted = [name for name in names if not args.rows or any(word in name for word in args.rows)]
    for seed in args.seeds:
        for subject in subjects:
            references, captions = reference_set(subject, seed=seed, size=args.side)
            score = Scorer(args, subject, references, seed)
            common = {"subject": subject.name, "seed": seed, "side": args.side}
            bp_seconds = next((r["train_seconds"] for r in records if r["row"] == "BP LoRA" and (r["subject"], r["seed"]) == (subject.name, seed)), None)
            for name, recipe in BP_ROWS:
                if name not in wanted or (name, subject.name, seed) in done:
                    continue
                tuned, stats = train_subject_lora(model, recipe, references, captions, steps=args.steps, rank=args.rank, seed=seed)
                seconds = stats["seconds_per_step"] * args.steps
                bp_seconds = seconds if name == "BP LoRA" else bp_seconds
                record = {"row": name, "checkpoint": "end", "step": args.steps, "train_seconds": seconds,
                          "memory_bytes": stats["memory_bytes"], **common, **score(tuned, ShapesTextEncoder())}
                _write(results, record)
                records.append(record)
                print(f"{name} {subject.name} seed {seed}: " + " ".join(f"{m} {record[m]:.3f}" for m in METRICS), flush=True)
            for recipe in ZO_ROWS:
                if recipe.name not in wanted or (recipe.name, subject.name, seed) in done:
                    continue
                scored: list[dict] = []

                def evaluate(step, seconds, trainee, encoder, recipe=recipe, scored=scored):
                    checkpoints = []
                    if step == args.steps:
                        checkpoints.append("equal steps")
                    if bp_seconds is not None and seconds >= bp_seconds and not any(s["checkpoint"] == "equal time" for s in scored):
                        checkpoints.append("equal time")
                    if checkpoints:
                        scores = score(trainee, encoder)
                        scored.extend({"checkpoint": c, "step": step, "train_seconds": seconds, **scores} for c in checkpoints)

                tuned, encoder, stats = train_forward_only(model, recipe, references, captions, steps=args.zo_steps, rank=args.rank,
                                                           seed=seed, callback=evaluate)
                if bp_seconds is not None and not any(s["checkpoint"] == "equal time" for s in scored):
                    scored.append({"checkpoint": "equal time (ran out)", "step": args.zo_steps, "train_seconds": stats["train_seconds"]})
                end = {"checkpoint": "end", "step": args.zo_steps, "train_seconds": stats["train_seconds"], **score(tuned, encoder)}
                for entry in [*scored, end]:
                    if "subject_similarity" not in entry:
                        entry.update({m: end[m] for m in METRICS})  # the run ended before BP's time: its end is the equal-time point
                    record = {"row": recipe.name, **entry, "memory_bytes": stats["memory_bytes"], "steps_by_kind": stats["steps_by_kind"], **common}
                    _write(results, record)
                    records.append(record)
                print(f"{recipe.name} {subject.name} seed {seed}: end " + " ".join(f"{m} {end[m]:.3f}" for m in METRICS), flush=True)


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


CHECKPOINT_ORDER = ("equal steps", "equal time", "end")


def report(args) -> None:
    records = [r for r in _records(Path(args.out)) if r["seed"] in args.seeds]
    base = [r["memory_bytes"] for r in records if r["row"] == "BP LoRA"]
    base_memory = statistics.mean(base) if base else None
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["row"], record["checkpoint"].replace(" (ran out)", "")), []).append(record)
    pairs = {(r["subject"], r["seed"]) for r in records}
    lines = [
        f"{len({s for s, _ in pairs})} subjects × {len({e for _, e in pairs})} seed(s), {args.side} px; mean ± std. Memory is measured, "
        "as a ratio to BP LoRA; steps and training seconds are means.",
        "",
        "| row | scored at | LoRAs | subject sim. | image sim. | prompt adherence | subject accuracy | memory | steps | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = list(dict.fromkeys(row for row, _ in groups))
    for row, checkpoint in sorted(groups, key=lambda key: (rows.index(key[0]), CHECKPOINT_ORDER.index(key[1]))):
        group = groups[(row, checkpoint)]
        memory = f"{statistics.mean(r['memory_bytes'] for r in group) / base_memory:.2f}×" if base_memory else "–"
        cells = " | ".join(_cell([r[m] for r in group]) for m in METRICS)
        steps, seconds = statistics.mean(r["step"] for r in group), statistics.mean(r["train_seconds"] for r in group)
        lines.append(f"| {row} | {checkpoint} | {len(group)} | {cells} | {memory} | {steps:.0f} | {seconds:.0f} |")
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/forward-only")
    parser.add_argument("--checkpoint", default=None, help="shapes DiT weights (default: the shipped checkpoint)")
    parser.add_argument("--side", type=int, default=None, help="default: the largest side the model was pretrained on")
    parser.add_argument("--subjects", type=int, default=10, help="how many held-out subjects (of 10)")
    parser.add_argument("--first-subject", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rows", nargs="*", help="only rows whose name contains one of these words")
    parser.add_argument("--steps", type=int, default=150, help="BP steps (and the equal-steps checkpoint)")
    parser.add_argument("--zo-steps", type=int, default=600)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--samples-per-prompt", type=int, default=2)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--report", help="write the markdown table here, then stop")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.side = args.side or max(pretrained_sides(args.checkpoint))
    report(args) if args.report else run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
