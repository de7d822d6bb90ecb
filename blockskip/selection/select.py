"""`select_blocks`: run the cross-attention masking probe and return an importance profile.

For every generation j (a LoRA, a prompt and a seed, or one set of transformer inputs), the probe
generates the unmasked x_j once and then, with the same noise, again with image → text
attention masked (`blockskip.selection.masking`)

- in a window of `window` consecutive blocks at every `stride`-th position (the masking curve;
  the window is clamped to the model's depth, and the last position is always included),
- in the first n blocks, for n = 1 … `max_skip`,
- in the last m blocks, for m = 1 … `max_skip`,

and records `D = 1 − cos(e(x_j), e(x̂_j))` for an embedding `e` (`blockskip.selection.embeddings`). The
result is a `SelectionProfile`; `best_skip(profile, ratio)` turns it into a split. That is
`1 + positions + 2 · max_skip` generations per sample, so bound `max_skip` by the largest ratio
you will train with.

Two ways to generate:
- a diffusers pipeline (`select_blocks(pipe, prompts=[...], loras=[...])`): each LoRA is loaded,
  probed with every prompt and seed, and unloaded; the pipeline returns latents for the latent
  metric and images for DINO/CLIP;
- a bare transformer (`select_blocks(model, inputs=[...])`): each dict of forward arguments,
  its `hidden_states` being the starting noise, is denoised by `EulerSampler`. Image embedders
  then need `decode` (latents → images in [0, 1]).

Example:
    >>> import torch
    >>> from diffusers import SanaTransformer2DModel
    >>> model = SanaTransformer2DModel(in_channels=4, out_channels=4, num_layers=4, num_attention_heads=2,
    ...     attention_head_dim=8, num_cross_attention_heads=2, cross_attention_head_dim=8,
    ...     cross_attention_dim=16, caption_channels=8, sample_size=4, patch_size=1).eval()
    >>> inputs = [{"hidden_states": torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(s)),
    ...            "encoder_hidden_states": torch.randn(1, 5, 8)} for s in range(2)]
    >>> profile = select_blocks(model, inputs=inputs, window=2, sampler=EulerSampler(steps=2), progress=False)
    >>> profile.window_starts, profile.max_skip
    ([0, 1, 2], 3)
    >>> split = best_skip(profile, 0.5)
    >>> split.leading + split.trailing
    2
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..families.layouts import get_layout
from ..training.sampling import EulerSampler
from .embeddings import Embedder, cosine_distance, load_embedder
from .masking import TextAttentionMask
from .profile import (
    ProfileError,
    SelectionProfile,
    best_skip,
    search_split,
    table_from_profile,
    table_source_code,
)

__all__ = [
    "ProfileError",
    "SelectionProfile",
    "best_skip",
    "search_split",
    "select_blocks",
    "table_from_profile",
    "table_source_code",
    "window_starts",
]


def window_starts(num_blocks: int, window: int, stride: int = 1) -> list[int]:
    """Start indices of the sliding window; the window is clamped to `num_blocks`.

    The last position (`num_blocks − window`) is always included, so the end of the stack is
    probed even when `stride` does not land on it.

        >>> window_starts(57, 14, 1)[-1], len(window_starts(57, 14, 1))
        (43, 44)
        >>> window_starts(7, 14), window_starts(10, 4, 4)
        ([0], [0, 4, 6])
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1")
    window = min(window, num_blocks)
    starts = list(range(0, num_blocks - window + 1, stride))
    if starts[-1] != num_blocks - window:
        starts.append(num_blocks - window)
    return starts


@dataclass(frozen=True)
class _Job:
    """One call of the generator: `samples` labels the rows it returns."""

    samples: tuple[str, ...]
    run: Callable[[], torch.Tensor]
    group: int  # jobs of one group share a LoRA


def _prompts_for(prompts: Sequence[str] | Mapping[str, Sequence[str]], lora: str | None) -> list[str]:
    """The prompts of one LoRA: a shared list, or a mapping keyed by LoRA path or folder name."""
    if not isinstance(prompts, Mapping):
        return list(prompts)
    for key in (lora, Path(lora).name if lora else None, "*"):
        if key is not None and key in prompts:
            return list(prompts[key])
    raise KeyError(f"no prompts for LoRA {lora!r}; the prompt mapping has {sorted(prompts)} (use '*' for a default)")


def _pipeline_jobs(
    pipeline: Any,
    prompts: Sequence[str] | Mapping[str, Sequence[str]],
    seeds: Sequence[int],
    lora_paths: Sequence[str | None],
    steps: int | None,
    output_type: str,
    pipeline_kwargs: dict[str, Any],
) -> list[_Job]:
    jobs = []
    for group, lora_path in enumerate(lora_paths):
        lora = Path(lora_path).name if lora_path else ""
        for prompt in _prompts_for(prompts, lora_path):
            for seed in seeds:

                def run(prompt=prompt, seed=seed) -> torch.Tensor:
                    arguments = dict(pipeline_kwargs)
                    if steps is not None:
                        arguments["num_inference_steps"] = steps
                    generator = torch.Generator("cpu").manual_seed(seed)
                    result = pipeline(prompt=prompt, generator=generator, output_type=output_type, **arguments)
                    images = result.images if hasattr(result, "images") else result[0]
                    if isinstance(images, (list, tuple)):
                        images = torch.stack([torch.as_tensor(image) for image in images])
                    return images

                label = f"{lora}|{prompt}|seed={seed}" if lora else f"{prompt}|seed={seed}"
                jobs.append(_Job((label,), run, group))
    return jobs


def _transformer_jobs(model: nn.Module, inputs: Sequence[dict], sampler: EulerSampler) -> list[_Job]:
    jobs = []
    for index, kwargs in enumerate(inputs):
        batch = kwargs[sampler.latent_arg].shape[0]
        labels = tuple(f"inputs[{index}]" if batch == 1 else f"inputs[{index}][{row}]" for row in range(batch))
        jobs.append(_Job(labels, lambda kwargs=kwargs: sampler.sample(model, kwargs), 0))
    return jobs


@contextlib.contextmanager
def _lora_loaded(pipeline: Any, path: str | None) -> Iterator[None]:
    """Load one LoRA into the pipeline for the duration of the block (nothing for `None`)."""
    if path is None:
        yield
        return
    pipeline.load_lora_weights(path, adapter_name="blockskip_probe")
    try:
        yield
    finally:
        pipeline.delete_adapters("blockskip_probe")


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="gen", dynamic_ncols=True)


def select_blocks(
    model_or_pipeline: Any,
    prompts: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    *,
    inputs: Sequence[dict[str, Any]] | None = None,
    loras: Sequence[str | Path] = (),
    seeds: Sequence[int] = (0,),
    window: int = 14,
    stride: int = 1,
    max_skip: int | None = None,
    embedder: Embedder | str = "latent",
    steps: int | None = None,
    sampler: EulerSampler | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    pipeline_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> SelectionProfile:
    """Run the masking probe and return its `SelectionProfile` (see the module docstring).

    `max_skip` bounds n and m (default: every count up to N − 1). `window=0` skips the sliding
    window. `steps` is the pipeline's `num_inference_steps` (the transformer path takes its
    steps from `sampler`). `pipeline_kwargs` go to every pipeline call (height, width,
    guidance_scale, ...).
    """
    embedder = load_embedder(embedder)
    if isinstance(prompts, str):
        prompts = [prompts]
    is_pipeline = hasattr(model_or_pipeline, "transformer") and callable(model_or_pipeline)
    if is_pipeline == (inputs is not None) or is_pipeline != (prompts is not None):
        raise ValueError("give a pipeline with prompts=[...], or a transformer with inputs=[...]")
    model = model_or_pipeline.transformer if is_pipeline else model_or_pipeline
    layout = get_layout(model)
    num_blocks = layout.num_blocks
    if num_blocks < 2:
        raise ValueError(f"{layout.model_class} has {num_blocks} block; nothing to select")
    max_skip = num_blocks - 1 if max_skip is None else max_skip
    if not 0 <= max_skip < num_blocks:
        raise ValueError(f"max_skip {max_skip} must be in [0, {num_blocks - 1}]")
    starts = window_starts(num_blocks, window, stride) if window else []
    window = min(window, num_blocks) if window else 0
    configs = (
        [("window", start, range(start, start + window)) for start in starts]
        + [("leading", n, range(n)) for n in range(1, max_skip + 1)]
        + [("trailing", m, range(num_blocks - m, num_blocks)) for m in range(1, max_skip + 1)]
    )

    from ..version import __version__

    settings: dict[str, Any] = {"window": window, "stride": stride, "max_skip": max_skip, "blockskip": __version__}
    if is_pipeline:
        if loras and getattr(model, "peft_config", None):
            raise ValueError(
                f"the pipeline's transformer already has LoRA adapters {sorted(model.peft_config)}; probe their "
                "LoRAs with loras=[...] on a clean pipeline, or fuse them and pass no loras"
            )
        lora_paths = [str(path) for path in loras] or [None]
        output_type = "latent" if embedder.wants == "latents" else "pt"
        jobs = _pipeline_jobs(
            model_or_pipeline, prompts, list(seeds), lora_paths, steps, output_type, dict(pipeline_kwargs or {})
        )
        if hasattr(model_or_pipeline, "set_progress_bar_config"):
            model_or_pipeline.set_progress_bar_config(disable=True)
        if isinstance(prompts, Mapping):
            recorded_prompts: Any = {key: list(value) for key, value in prompts.items()}
        else:
            recorded_prompts = list(prompts)
        settings.update(
            sampler=f"{type(model_or_pipeline).__name__}", steps=steps, seeds=list(seeds),
            prompts=recorded_prompts,
            loras=[path for path in lora_paths if path],
            pipeline_kwargs={key: repr(value) for key, value in (pipeline_kwargs or {}).items()},
        )
    else:
        if loras:
            raise ValueError("loras=[...] needs a pipeline; load LoRA into the transformer yourself")
        sampler = sampler or EulerSampler()
        jobs = _transformer_jobs(model, inputs, sampler)
        lora_paths = [None]
        settings.update(sampler=f"euler (steps {sampler.steps}, shift {sampler.shift})", steps=sampler.steps)
        if embedder.wants == "images" and decode is None:
            raise ValueError(f"{embedder!r} compares images; pass decode=latents->images for the transformer path")

    def generate(job: _Job) -> torch.Tensor:
        output = job.run()
        if embedder.wants == "images" and not is_pipeline:
            output = decode(output)
        return embedder(output)

    samples = [label for job in jobs for label in job.samples]
    distances = {config[:2]: [] for config in configs}
    mask = TextAttentionMask(model)
    bar = _progress(len(jobs) * (1 + len(configs)), progress, f"blockskip select ({layout.model_class})")
    try:
        for group, lora in enumerate(lora_paths):
            group_jobs = [job for job in jobs if job.group == group]
            if not group_jobs:
                continue
            with _lora_loaded(model_or_pipeline, lora) if is_pipeline else contextlib.nullcontext():
                for job in group_jobs:
                    with torch.no_grad():
                        with mask.masking(()):
                            reference = generate(job)
                        bar.update(1)
                        for kind, count, blocks in configs:
                            with mask.masking(blocks):
                                distances[(kind, count)].extend(cosine_distance(reference, generate(job)).tolist())
                            bar.update(1)
    finally:
        bar.close()
        mask.remove()

    return SelectionProfile(
        model_class=layout.model_class,
        num_blocks=num_blocks,
        samples=samples,
        leading=[distances[("leading", n)] for n in range(1, max_skip + 1)],
        trailing=[distances[("trailing", m)] for m in range(1, max_skip + 1)],
        window_size=window,
        window_stride=stride,
        window_starts=starts,
        window_distances=[distances[("window", start)] for start in starts],
        metric=embedder.name,
        block_lists=[(block_list.name, len(block_list)) for block_list in layout],
        settings=settings,
    )
