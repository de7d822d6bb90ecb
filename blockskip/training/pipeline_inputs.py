"""The transformer's inputs and the flow-matching target, from a collated batch and a diffusers pipeline.

The cached residual mode needs the precompute and the training loop to feed the transformer the
*same* inputs for every bank entry. `PipelineInputs` is the one place both build them, for the
FLUX, SD3 and Sana pipelines, the way the diffusers DreamBooth-LoRA scripts do per family:

| family | latents | hidden_states | timestep | text inputs |
|---|---|---|---|---|
| FLUX (`FluxPipeline`) | `(z − shift) · scale` | 2×2-packed tokens, plus `img_ids` / `txt_ids` | `σ` (the script's `t / 1000`) | T5 tokens, CLIP pooled; `guidance` when `guidance_embeds` |
| SD3 (`StableDiffusion3Pipeline`) | `(z − shift) · scale` | the latent image | `σ · 1000` | CLIP + T5 tokens, pooled CLIPs |
| Sana (`SanaPipeline`) | DC-AE latent `· scale` | the latent image | `σ · 1000` | Gemma tokens and their attention mask |

The noisy input is `(1 − σ)·z + σ·ε` and the target `ε − z` (packed like the output for FLUX, so
`mse(transformer(**kwargs)[0], target)` is the scripts' loss). `σ` is the batch's `noise_level`;
`ε` is the schedule's own noise for each entry, drawn in the VAE latent shape
(`TrainingSchedule.noise`), so it is the same in the precompute and in training.

**Latents are deterministic**: the VAE posterior's mean (`latent_dist.mode()`), not a sample.
The diffusers scripts draw `latent_dist.sample()`, fresh noise on every call; a residual bank is
only valid for the exact input it was computed from, so an input that changes from the
precompute to training would silently invalidate it. (Sana's DC-AE is deterministic anyway.)
Text embeddings are computed once per unique prompt (`PromptCache`), one prompt at a time, so a
caption's embedding does not depend on its batch.

Example (`pipeline` is a loaded `FluxPipeline`; see `docs/cached.md` for the whole loop):

    inputs = PipelineInputs(pipeline, max_sequence_length=512)
    for step, batch in enumerate(loader):                  # DataLoader(schedule.dataset(...), ...)
        kwargs, target = inputs.forward_kwargs(batch, schedule.step(step))
        loss = F.mse_loss(pipeline.transformer(**kwargs, return_dict=False)[0].float(), target)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..residuals.schedule import ScheduleEntry, TrainingSchedule
from .prompt_cache import PromptCache

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class _Family:
    name: str
    max_sequence_length: int  # the DreamBooth-LoRA script's default
    timestep_scale: float  # noise level -> the transformer's `timestep`
    shared: tuple[str, ...]  # inputs without a batch dimension


FAMILIES = {
    "FluxTransformer2DModel": _Family("flux", 512, 1.0, ("img_ids", "txt_ids")),
    "SD3Transformer2DModel": _Family("sd3", 77, 1000.0, ()),
    "SanaTransformer2DModel": _Family("sana", 300, 1000.0, ()),
}


def pipeline_family(pipeline: Any) -> str:
    """`"flux"`, `"sd3"` or `"sana"`, from the pipeline's transformer class."""
    name = type(getattr(pipeline, "transformer", None)).__name__
    if name not in FAMILIES:
        supported = ", ".join(f"{cls} ({family.name})" for cls, family in FAMILIES.items())
        raise ValueError(f"{type(pipeline).__name__} has a {name} transformer; PipelineInputs supports {supported}")
    return FAMILIES[name].name


def load_pipeline(folder: str | os.PathLike, dtype: str | torch.dtype = "fp32"):
    """Load a diffusers pipeline folder with every component in `dtype` (`fp32`, `bf16`, `fp16`).

    The precompute command loads its pipeline this way; load the training pipeline the same way
    so the VAE and text encoders give the inputs the bank was computed from.
    """
    from diffusers import DiffusionPipeline
    from diffusers.utils import deprecation_utils

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    # newer diffusers renamed `torch_dtype` to `dtype` (and warn on the old name); older ones know only `torch_dtype`
    name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return DiffusionPipeline.from_pretrained(folder, **{name: torch_dtype})


def _device_of(module: torch.nn.Module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2×2 packing: `(B, C, h, w)` → `(B, h/2 · w/2, 4C)`, the layout of `FluxPipeline`.

    >>> pack_latents(torch.zeros(1, 16, 4, 6)).shape
    torch.Size([1, 6, 64])
    """
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def image_ids(height: int, width: int) -> torch.Tensor:
    """FLUX's image position ids for a `height × width` grid of packed tokens: `(row, column)` in axes 1, 2.

    >>> image_ids(2, 2).tolist()
    [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    """
    rows = torch.arange(height).repeat_interleave(width)
    columns = torch.arange(width).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, columns], dim=1).float()


class PipelineInputs:
    """Builds `(forward_kwargs, target)` for a pipeline's transformer from collated batches.

    Args:
        pipeline: a loaded `FluxPipeline`, `StableDiffusion3Pipeline` or `SanaPipeline` (any
            pipeline with one of their transformers, VAE and text encoders).
        max_sequence_length: text tokens (default: the family's DreamBooth script default,
            FLUX 512, SD3 77, Sana 300).
        guidance_scale: FLUX's distilled guidance input, when the transformer has `guidance_embeds`.
        complex_human_instruction: Sana's prompt preamble (`None`, as in the Sana script).
        device: where the inputs go (default: the transformer's device at call time). The VAE
            and the text encoders run where they are.

    A batch needs `pixel_values` `(B, 3, H, W)` in `[-1, 1]`, `noise_level` `(B,)` (1 = pure
    noise), `prompt` (or `prompts`) and, when it comes from `schedule.dataset(...)`,
    `blockskip_key`, which is checked against the entries.
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        max_sequence_length: int | None = None,
        guidance_scale: float = 3.5,
        complex_human_instruction: list[str] | None = None,
        device: str | torch.device | None = None,
    ):
        pipeline_family(pipeline)
        self.pipeline = pipeline
        self.spec = FAMILIES[type(pipeline.transformer).__name__]
        self.family = self.spec.name
        self.max_sequence_length = int(max_sequence_length or self.spec.max_sequence_length)
        self.guidance_scale = float(guidance_scale)
        self.complex_human_instruction = complex_human_instruction
        self.device = torch.device(device) if device is not None else None
        self.prompts = PromptCache(self._encode_prompt)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipeline.transformer

    @property
    def pixel_multiple(self) -> int:
        """Pixels per image token side: VAE factor × patch (16 for FLUX and SD3, 32 for Sana)."""
        vae = self.pipeline.vae
        channels = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
        patch = 2 if self.family == "flux" else int(self.transformer.config.patch_size)
        return 2 ** (len(channels) - 1) * patch

    def settings(self) -> dict[str, Any]:
        """What, besides the weights and the schedule, decides the inputs (recorded beside a bank)."""
        return {
            "family": self.family,
            "max_sequence_length": self.max_sequence_length,
            "guidance_scale": self.guidance_scale if self.family == "flux" else None,
            "complex_human_instruction": self.complex_human_instruction,
            "vae_dtype": str(self.pipeline.vae.dtype).replace("torch.", ""),
        }

    # -- encoders ---------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Deterministic, scaled VAE latents `(B, C, h, w)` in float32 (see the module docstring)."""
        vae = self.pipeline.vae
        with torch.no_grad():
            encoded = vae.encode(pixel_values.to(_device_of(vae), vae.dtype))
        distribution = getattr(encoded, "latent_dist", None)
        latents = (distribution.mode() if distribution is not None else encoded.latent).float()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    def _encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        # kept on the CPU: a few MB per caption (T5 at 512 tokens), too much to hold on the GPU for large datasets
        return {name: tensor.to("cpu") for name, tensor in self._run_text_encoders(prompt).items()}

    def _run_text_encoders(self, prompt: str) -> dict[str, torch.Tensor]:
        pipeline = self.pipeline
        encoders = [getattr(pipeline, name, None) for name in ("text_encoder", "text_encoder_2", "text_encoder_3")]
        encoder = next((e for e in encoders if e is not None), None)
        if encoder is None:
            raise ValueError(f"the {type(pipeline).__name__} has no text encoder loaded: it is needed to encode the captions")
        common = {"device": _device_of(encoder), "max_sequence_length": self.max_sequence_length}
        if self.family == "flux":
            text, pooled, _ = pipeline.encode_prompt(prompt=[prompt], prompt_2=None, **common)
            return {"encoder_hidden_states": text, "pooled_projections": pooled}
        if self.family == "sd3":
            text, _, pooled, _ = pipeline.encode_prompt(
                prompt=[prompt], prompt_2=None, prompt_3=None, do_classifier_free_guidance=False, **common
            )
            return {"encoder_hidden_states": text, "pooled_projections": pooled}
        text, mask, _, _ = pipeline.encode_prompt(
            [prompt], do_classifier_free_guidance=False, complex_human_instruction=self.complex_human_instruction, **common
        )
        return {"encoder_hidden_states": text, "encoder_attention_mask": mask}

    # -- the step ---------------------------------------------------------------------------
    def forward_kwargs(
        self, batch: dict[str, Any], entries: Sequence[ScheduleEntry]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The transformer's keyword arguments (without `return_dict`) and the float32 target."""
        pixels = batch["pixel_values"]
        rows = pixels.shape[0]
        prompts = batch.get("prompt", batch.get("prompts"))
        if prompts is None:
            raise KeyError(f"the batch has no 'prompt' or 'prompts' (keys: {sorted(batch)})")
        _check_entries(batch, entries, rows)
        multiple = self.pixel_multiple
        if pixels.shape[-1] % multiple or pixels.shape[-2] % multiple:
            raise ValueError(
                f"images of {tuple(pixels.shape[-2:])} pixels: a {self.family} pipeline needs sides that are "
                f"multiples of {multiple} (set the plan's patches.multiple_of)"
            )
        latents = self.encode_images(pixels)
        noise = TrainingSchedule.noise(entries, latents.shape[1:], device=latents.device)
        sigma = batch["noise_level"].to(latents.device, torch.float32)
        noisy = (1 - sigma[:, None, None, None]) * latents + sigma[:, None, None, None] * noise
        target = noise - latents
        text = self.prompts(list(prompts))
        timestep = sigma * self.spec.timestep_scale
        if self.family == "sana":
            timestep = timestep * float(getattr(self.transformer.config, "timestep_scale", 1.0) or 1.0)
        kwargs: dict[str, torch.Tensor] = {"timestep": timestep, **text}
        if self.family == "flux":
            height, width = latents.shape[-2] // 2, latents.shape[-1] // 2
            kwargs.update(hidden_states=pack_latents(noisy), img_ids=image_ids(height, width),
                          txt_ids=torch.zeros(text["encoder_hidden_states"].shape[1], 3))
            if getattr(self.transformer.config, "guidance_embeds", False):
                kwargs["guidance"] = torch.full((rows,), self.guidance_scale)
            target = pack_latents(target)
        else:
            kwargs["hidden_states"] = noisy
        return self._place(kwargs), target.to(self._target_device())

    def _target_device(self) -> torch.device:
        return self.device if self.device is not None else _device_of(self.transformer)

    def _place(self, kwargs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype, device = self.transformer.dtype, self._target_device()
        placed = {}
        for name, value in kwargs.items():
            # timesteps and guidance stay float32, as the scripts pass them; masks keep their dtype
            keep = name in ("timestep", "guidance") or not value.is_floating_point()
            placed[name] = value.to(device) if keep else value.to(device, dtype)
        return placed

    def split(self, kwargs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """One batch-1 kwargs dict per row (the inputs `precompute_residuals` takes)."""
        rows = kwargs["hidden_states"].shape[0]
        return [
            {name: value if name in self.spec.shared else value[row : row + 1] for name, value in kwargs.items()}
            for row in range(rows)
        ]

    def bank_inputs(
        self, loader: Iterable[dict[str, Any]], schedule: TrainingSchedule, skip: Iterable[str] = ()
    ) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """`(key, batch-1 kwargs)` for every entry of the schedule, step by step, for `precompute_residuals`.

        `loader` yields the schedule's batches in order (a `DataLoader` over `schedule.dataset(...)`
        with `batch_size=schedule.batch_size` and no shuffling). Batches whose keys are all in `skip`
        (already in the bank) are not encoded.
        """
        skip = set(skip)
        for step, batch in enumerate(loader):
            entries = schedule.step(step)
            if all(entry.key in skip for entry in entries):
                continue
            kwargs, _ = self.forward_kwargs(batch, entries)
            for entry, sample in zip(entries, self.split(kwargs)):
                if entry.key not in skip:
                    yield entry.key, sample


def _check_entries(batch: dict[str, Any], entries: Sequence[ScheduleEntry], rows: int) -> None:
    """Refuse a batch that is not the one the entries describe: its residuals would be wrong."""
    if len(entries) != rows:
        raise ValueError(f"the batch has {rows} rows but {len(entries)} schedule entries were given")
    keys = batch.get("blockskip_key")
    if keys is not None and list(keys) != [entry.key for entry in entries]:
        raise ValueError(
            f"the batch holds entries {list(keys)[:4]} but the schedule step is {[e.key for e in entries][:4]}: "
            "batches and steps are out of step (DataLoader shuffled, or a wrong step index)"
        )
    levels = torch.as_tensor([entry.noise_level for entry in entries], dtype=torch.float32)
    if not torch.allclose(batch["noise_level"].float().cpu(), levels, atol=1e-6):
        raise ValueError("the batch's noise levels are not those of the schedule entries (collator not fed by the schedule?)")
