"""Forward-only personalization of the shapes DiT: zeroth-order LoRA, BP-low / ZO-high, ZO textual inversion.

The same references, captions, noise levels and noise as `personalize.train_subject_lora`; what a
`ForwardOnlyRecipe` changes is how the parameters learn:

- `zo`: LoRA on the attention projections, every step a zeroth-order step
  (`ZerothOrderOptimizer`) on a full-side batch: two forward passes, no backward;
- `selective`: per step, backpropagation on the half-side dynamic-patch batch (BP-low, AdamW) or
  a zeroth-order step on the full-side batch (ZO-high), drawn by `SelectiveOptimization` from the
  step's mean noise level and the share of training done;
- `textual_inversion`: no LoRA; the vector of the new word `sks` learns by ZOODiP's recipe
  (`ZerothOrderTextualInversion`), with noise levels from its partial uniform sampling.

With `skip`, the plan's leading and trailing blocks are skipped with online residuals: they run
without gradients in BP-low steps and cost nothing extra in ZO forwards, and LoRA lives only in
the kept blocks. LoRAs are saved and loaded into a fresh full model, as a user would.

    >>> from blockskip.shapes import build_shapes_dit
    >>> from blockskip.shapes.scenes import HELD_OUT_SUBJECTS
    >>> from blockskip.shapes.personalize import reference_set
    >>> refs, captions = reference_set(HELD_OUT_SUBJECTS[0], count=2)
    >>> recipe = ForwardOnlyRecipe("BP-low / ZO-high", method="selective")
    >>> model, encoder, stats = train_forward_only(build_shapes_dit(), recipe, refs, captions, steps=3, batch_size=2)
    >>> sorted(stats["steps_by_kind"]), stats["steps_by_kind"]["bp"] + stats["steps_by_kind"]["zo"]
    (['bp', 'zo'], 3)
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..crops.collator import DynamicPatchCollator
from ..crops.timesteps import LogitNormalSampler, partial_uniform
from ..estimate.memory import measure_peak_memory
from ..residuals.schedule import TrainingSchedule
from ..skipping.lora import lora_target_modules
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip import apply_block_skip
from ..zeroth_order import SelectiveOptimization, ZerothOrderOptimizer, ZerothOrderTextualInversion, forwards_per_step
from .evaluation import TOKEN
from .personalize import ATTENTION_TARGETS, ScheduledInputs, block_linears, reload_into_full_model, resolutions
from .text import ShapesTextEncoder

METHODS = ("zo", "selective", "textual_inversion")
Callback = Callable[[int, float, nn.Module, ShapesTextEncoder], None]


@dataclass(frozen=True)
class ForwardOnlyRecipe:
    """One forward-only row. ZO defaults: central estimator, ε = 1e-3, one query (MeZO), Adam
    updates at `zo_lr` (ZOAdam, as MeZO's LoRA variant and ZOODiP use it)."""

    name: str
    method: str = "zo"
    skip: dict | None = None
    zo_lr: float = 1e-3
    epsilon: float = 1e-3
    queries: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method is one of {METHODS}, not {self.method!r}")
        if self.skip is not None and self.method == "textual_inversion":
            raise ValueError("textual inversion trains no LoRA, so a skip section has nothing to act on")


def _loader(schedule: TrainingSchedule, examples: list[dict], batch_size: int) -> DataLoader:
    collate = DynamicPatchCollator(schedule.patches, convention="sigma")
    return DataLoader(schedule.dataset(examples), batch_size=batch_size, shuffle=False, collate_fn=collate)


def _loss(trainee: nn.Module, inputs: ScheduledInputs, batch: dict, step: int) -> torch.Tensor:
    kwargs, target = inputs(batch, step)
    return torch.nn.functional.mse_loss(trainee(**kwargs)[0], target)


def _train_seconds(times: dict[str, list[float]], measured: dict) -> float:
    """Time of the steps so far, each measured (first) step counted at its kind's mean unmeasured time."""
    return sum(sum(spent) + (sum(spent) / len(spent) if kind in measured and spent else 0.0) for kind, spent in times.items())


def train_forward_only(
    model: nn.Module,
    recipe: ForwardOnlyRecipe,
    references: torch.Tensor,
    captions: list[str],
    *,
    steps: int = 600,
    batch_size: int = 4,
    rank: int = 8,
    bp_lr: float = 3e-3,
    seed: int = 0,
    selector: SelectiveOptimization | None = None,
    callback: Callback | None = None,
    work_dir: str | Path | None = None,
) -> tuple[nn.Module, ShapesTextEncoder, dict]:
    """Train `recipe` on a copy of `model`; return the model to sample (full, LoRA loaded), its text encoder, and stats.

    `callback(step, train_seconds, model, encoder)` runs after every step (its time is not counted),
    so a benchmark can sample at equal steps or equal wall time. Stats: `memory_bytes` (weights in the
    module tree + the larger measured peak of the first BP and first ZO step), `train_seconds`,
    `seconds_per_step`, `steps_by_kind`, `forwards`, `backwards`, `final_loss`, `trainable_parameters`.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="blockskip-forward-only-") as scratch:
            return train_forward_only(
                model, recipe, references, captions, steps=steps, batch_size=batch_size, rank=rank, bp_lr=bp_lr,
                seed=seed, selector=selector, callback=callback, work_dir=scratch,
            )
    from peft import LoraConfig

    torch.manual_seed(seed)
    side, inversion = references.shape[-1], recipe.method == "textual_inversion"
    sampler = partial_uniform() if inversion else LogitNormalSampler()
    sizes = [tuple(references.shape[-2:])] * len(references)
    # Same seed and sampler: both schedules draw the same samples, noise levels and noise; only the crops differ.
    full_schedule = TrainingSchedule(sizes, steps, batch_size, resolutions(side)["full"], seed=seed, sampler=sampler)
    low_schedule = TrainingSchedule(sizes, steps, batch_size, resolutions(side)["patches"], seed=seed, sampler=sampler)
    examples = [{"image": image, "caption": text} for image, text in zip(references, captions)]
    encoder = ShapesTextEncoder()
    full_inputs = ScheduledInputs(full_schedule, encoder, cache_text=not inversion)
    low_inputs = ScheduledInputs(low_schedule, encoder)

    trainee = copy.deepcopy(model).requires_grad_(False)
    handle = None
    if inversion:
        parameters = [encoder.token_vector(TOKEN)]
        optimizer = ZerothOrderTextualInversion(parameters[0], seed=seed)
        zo_forwards = forwards_per_step("forward", optimizer.optimizer.queries)
    else:
        if recipe.skip is not None:
            patches = low_schedule.patches
            plan = BlockSkipPlan.from_dict({
                "skip": recipe.skip, "residuals": {"mode": "online"}, "offload": "cpu",
                "patches": {"min_size": patches.min_size, "max_size": patches.max_size, "multiple_of": 4, "schedule": patches.schedule},
            })
            handle = apply_block_skip(trainee, plan, schedule=low_schedule)
            targets = lora_target_modules(trainee, ATTENTION_TARGETS)
        else:
            targets = block_linears(trainee, ATTENTION_TARGETS)
        trainee.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True))
        parameters = [p for p in trainee.parameters() if p.requires_grad]
        optimizer = ZerothOrderOptimizer(parameters, lr=recipe.zo_lr, epsilon=recipe.epsilon, queries=recipe.queries, update="adam", seed=seed)
        zo_forwards = forwards_per_step("central", recipe.queries)
    backprop = torch.optim.AdamW(parameters, lr=bp_lr) if recipe.method == "selective" else None
    selector = selector or SelectiveOptimization(seed=seed)
    trainee.train()

    kinds, peaks, losses, forwards, backwards = {"bp": 0, "zo": 0}, {}, [], 0, 0
    times: dict[str, list[float]] = {"bp": [], "zo": []}  # unmeasured steps only: counting storages slows a step
    for step, (full_batch, low_batch) in enumerate(zip(_loader(full_schedule, examples, batch_size), _loader(low_schedule, examples, batch_size))):
        start = time.perf_counter()
        kind = "zo"
        if recipe.method == "selective":
            kind = selector.choose(float(full_batch["noise_level"].float().mean()), step / steps)
        measuring = kind not in peaks  # the first step of each kind
        with measure_peak_memory("cpu") if measuring else contextlib.nullcontext() as usage:
            if kind == "bp":
                loss = _loss(trainee, low_inputs, low_batch, step)
                loss.backward()
                backprop.step()
                backprop.zero_grad(set_to_none=True)
                value, forwards, backwards = loss.item(), forwards + 1, backwards + 1
            else:
                with torch.no_grad():
                    result = optimizer.step(lambda: _loss(trainee, full_inputs, full_batch, step))
                value, forwards = result.loss, forwards + zo_forwards
        if measuring:
            peaks[kind] = usage.peak_increase_bytes
        kinds[kind] += 1
        losses.append(value)
        if not measuring:
            times[kind].append(time.perf_counter() - start)
        if callback is not None:
            callback(step + 1, _train_seconds(times, peaks), trainee, encoder)

    weights = sum(p.numel() * p.element_size() for p in trainee.parameters())
    stats = {
        "memory_bytes": weights + max(peaks.values()),
        "peak_bytes_by_kind": peaks,
        "train_seconds": _train_seconds(times, peaks),
        "seconds_per_step": _train_seconds(times, peaks) / max(steps, 1),
        "steps_by_kind": kinds,
        "forwards": forwards,
        "backwards": backwards,
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "trainable_parameters": sum(p.numel() for p in parameters),
        "skipped_blocks": 0 if handle is None else len(handle.skipped_block_names()),
    }
    tuned = model if inversion else reload_into_full_model(model, trainee, handle, Path(work_dir))
    return tuned, encoder, stats


__all__ = ["ForwardOnlyRecipe", "METHODS", "train_forward_only"]
