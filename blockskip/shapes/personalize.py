"""Personalize the shapes DiT on one subject with a LoRA, trained the way a recipe says.

A `Recipe` is one row of the quality table: the training resolution (`full`: the references'
side, plain `resize` to half of it, or `patches`: DiT-BlockSkip's timestep-dependent crops resized
to half the side, as the paper trains 512 px references at 256), an optional skip section of a
plan, and the residual mode of the skipped blocks (`online`, `cached`, `none`). The references
may be rendered at any side the model was pretrained on (`reference_set(..., size=64)`).
Every recipe sees the same references, captions, noise levels, noise and step count (one
`TrainingSchedule`); only what the recipe changes differs. The trained LoRA is saved with
`save_lora` and loaded into a fresh, full model with diffusers' `load_lora_adapter`, as a user
would, and that model is what gets sampled.

    >>> from blockskip.shapes import build_shapes_dit
    >>> from blockskip.shapes.scenes import HELD_OUT_SUBJECTS
    >>> refs, captions = reference_set(HELD_OUT_SUBJECTS[0], count=2)
    >>> captions
    ['large sks circle on speckled olive', 'large sks circle on navy']
    >>> resolutions(64)["patches"].min_size, resolutions(64)["patches"].max_size
    (32, 64)
    >>> recipe = Recipe("skip 50%", skip={"ratio": 0.5})
    >>> model, stats = train_subject_lora(build_shapes_dit(), recipe, refs, captions, steps=2, batch_size=2)
    >>> sorted(stats)
    ['final_loss', 'memory_bytes', 'reload_error', 'seconds_per_step', 'skipped_blocks', 'trainable_parameters']
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..crops.collator import DynamicPatchCollator
from ..crops.patches import PatchSchedule
from ..crops.timesteps import LogitNormalSampler
from ..estimate.memory import measure_peak_memory
from ..families.layouts import get_layout
from ..residuals.schedule import TrainingSchedule
from ..skipping.lora import LORA_WEIGHT_NAME, block_linear_names, lora_target_modules, save_lora
from ..skipping.plan import BlockSkipPlan
from ..skipping.skip import apply_block_skip
from ..training.precompute import precompute_residuals
from .evaluation import TOKEN
from .model import pack, text_ids
from .scenes import IMAGE_SIZE, Subject, caption, render, subject_scene
from .text import ShapesTextEncoder

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def resolutions(side: int = IMAGE_SIZE) -> dict[str, PatchSchedule]:
    """The three training resolutions for references of `side` px: full, plain resize to half, dynamic patches to half."""
    half = side // 2
    return {
        "full": PatchSchedule(min_size=side, max_size=side, multiple_of=4),
        "resize": PatchSchedule(min_size=half, max_size=side, multiple_of=4, schedule="resize"),
        "patches": PatchSchedule(min_size=half, max_size=side, multiple_of=4, schedule="low_to_high"),
    }


@dataclass(frozen=True)
class Recipe:
    name: str
    resolution: str = "patches"
    skip: dict | None = None
    residuals: str = "online"
    tags: tuple[str, ...] = field(default=())

    def plan(self, bank: str | None = None, side: int = IMAGE_SIZE) -> BlockSkipPlan | None:
        if self.skip is None:
            return None
        schedule = resolutions(side)[self.resolution]
        residuals = {"mode": self.residuals, "bank": bank} if self.residuals == "cached" else {"mode": self.residuals}
        return BlockSkipPlan.from_dict(
            {
                "skip": self.skip,
                "residuals": residuals,
                "offload": "drop" if self.residuals == "cached" else "cpu",
                "patches": {"min_size": schedule.min_size, "max_size": schedule.max_size, "multiple_of": 4, "schedule": schedule.schedule},
            }
        )


def reference_set(subject: Subject, count: int = 5, seed: int = 0, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, list[str]]:
    """`count` reference images of `subject` (alone, on varied backgrounds) rendered at `size` px, and their captions."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    scenes = [subject_scene(subject, generator) for _ in range(count)]
    return torch.stack([render(scene, size) for scene in scenes]), [caption(scene, subject_token=TOKEN) for scene in scenes]


def block_linears(model: nn.Module, suffixes) -> list[str]:
    """Linear layers inside any of the model's transformer blocks whose names end in one of `suffixes`."""
    blocks = [f"{block_list.name}.{index}" for block_list in get_layout(model).lists for index in range(len(block_list))]
    return block_linear_names(model, blocks, suffixes)


class ScheduledInputs:
    """Model inputs of one scheduled batch: packed crops, the schedule's noise, text features.

    Text features are cached per prompt unless `cache_text=False` (textual inversion changes a
    word's vector between calls)."""

    def __init__(self, schedule: TrainingSchedule, encoder: ShapesTextEncoder, cache_text: bool = True):
        self.schedule, self.encoder, self.text, self.cache_text = schedule, encoder, {}, cache_text

    def _encode(self, prompts: list[str]):
        if not self.cache_text:
            return self.encoder(prompts)
        missing = [p for p in prompts if p not in self.text]
        if missing:
            for prompt, tokens, pooled in zip(missing, *self.encoder(missing)):
                self.text[prompt] = (tokens, pooled)
        return torch.stack([self.text[p][0] for p in prompts]), torch.stack([self.text[p][1] for p in prompts])

    def __call__(self, batch: dict, step: int):
        tokens, ids = pack(batch["pixel_values"])
        noise = self.schedule.noise(self.schedule.step(step), tokens.shape[1:])
        sigma = batch["noise_level"].float()
        text, pooled = self._encode(list(batch["caption"]))
        noisy = (1 - sigma[:, None, None]) * tokens + sigma[:, None, None] * noise
        kwargs = dict(
            hidden_states=noisy, encoder_hidden_states=text, pooled_projections=pooled, timestep=sigma, img_ids=ids,
            txt_ids=text_ids(text.shape[1]), return_dict=False,
        )
        return kwargs, noise - tokens


def _bank_samples(loader, inputs: ScheduledInputs):
    for step, batch in enumerate(loader):
        kwargs, _ = inputs(batch, step)
        kwargs.pop("return_dict")
        for row, key in enumerate(batch["blockskip_key"]):
            yield key, {k: v if k in ("img_ids", "txt_ids") else v[row : row + 1] for k, v in kwargs.items()}


def train_subject_lora(
    model: nn.Module,
    recipe: Recipe,
    references: torch.Tensor,
    captions: list[str],
    *,
    steps: int = 150,
    batch_size: int = 4,
    rank: int = 8,
    lr: float = 3e-3,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> tuple[nn.Module, dict]:
    """Train a LoRA on a copy of `model` following `recipe`; return the full model with the LoRA loaded, and stats.

    The bank and the saved LoRA go to `work_dir`; without one they go to a scratch folder that is
    removed before returning.
    """
    from peft import LoraConfig

    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="blockskip-personalize-") as scratch:
            return train_subject_lora(
                model, recipe, references, captions, steps=steps, batch_size=batch_size, rank=rank, lr=lr, seed=seed, work_dir=scratch
            )
    torch.manual_seed(seed)
    work = Path(work_dir)
    side = references.shape[-1]
    patches = resolutions(side)[recipe.resolution]
    schedule = TrainingSchedule([tuple(references.shape[-2:])] * len(references), steps, batch_size, patches, seed=seed, sampler=LogitNormalSampler())
    examples = [{"image": image, "caption": text} for image, text in zip(references, captions)]
    loader = DataLoader(schedule.dataset(examples), batch_size=batch_size, shuffle=False, collate_fn=DynamicPatchCollator(patches, convention="sigma"))
    inputs = ScheduledInputs(schedule, ShapesTextEncoder())
    plan = recipe.plan(bank=str(work / "bank"), side=side)

    trainee = copy.deepcopy(model).requires_grad_(False)
    handle = None
    if plan is not None:
        if plan.residuals.mode == "cached":
            precompute_residuals(trainee, plan, _bank_samples(loader, inputs), plan.residuals.bank, schedule=schedule, progress=False)
        handle = apply_block_skip(trainee, plan, schedule=schedule)
        targets = lora_target_modules(trainee, ATTENTION_TARGETS)
    else:
        targets = block_linears(trainee, ATTENTION_TARGETS)
    trainee.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=True))
    parameters = [p for p in trainee.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr)
    trainee.train()
    losses, times, memory = [], [], 0
    for step, batch in enumerate(loader):
        start = time.perf_counter()
        kwargs, target = inputs(batch, step)
        keys = batch["blockskip_key"]
        upcoming = schedule.keys(step + 1) if step + 1 < steps else None
        with measure_peak_memory("cpu") if step == 0 else contextlib.nullcontext() as usage:
            if handle is not None and plan.residuals.mode == "cached":
                with handle.step(keys, next_keys=upcoming):
                    prediction = trainee(**kwargs)[0]
            else:
                prediction = trainee(**kwargs)[0]
            loss = torch.nn.functional.mse_loss(prediction, target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step == 0:
            memory = sum(p.numel() * p.element_size() for p in trainee.parameters()) + usage.peak_increase_bytes
        else:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    stats = {
        "memory_bytes": memory,
        "seconds_per_step": sum(times) / max(len(times), 1),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "trainable_parameters": sum(p.numel() for p in parameters),
        "skipped_blocks": 0 if handle is None else len(handle.skipped_block_names()),
    }
    full = reload_into_full_model(model, trainee, handle, work)
    if handle is not None and plan.residuals.mode == "online":
        stats["reload_error"] = _reload_error(trainee, full, inputs, loader)
    return full, stats


@torch.no_grad()
def _reload_error(trainee: nn.Module, full: nn.Module, inputs: ScheduledInputs, loader) -> float:
    """Relative output difference between the trained skipped model and the reloaded full one.

    Online residuals make the skipped model compute exactly what the full model with the same LoRA
    computes, so this is ~1e-7 unless saving or loading lost something.
    """
    kwargs, _ = inputs(next(iter(loader)), 0)
    trainee.eval()
    reference = trainee(**kwargs)[0]
    return float((full(**kwargs)[0] - reference).norm() / reference.norm())


def reload_into_full_model(base: nn.Module, trainee: nn.Module, handle, work: Path) -> nn.Module:
    """The LoRA saved as a user would save it, loaded into a fresh full copy of the base model."""
    if handle is None:
        return trainee.eval()
    lora_dir = save_lora(trainee, work / "lora")
    full = copy.deepcopy(base).requires_grad_(False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="While injecting the PEFT adapters", category=RuntimeWarning)
        full.load_lora_adapter(str(lora_dir), weight_name=LORA_WEIGHT_NAME, prefix=None, adapter_name="default")
    return full.eval()


__all__ = ["Recipe", "reference_set", "resolutions", "train_subject_lora"]
