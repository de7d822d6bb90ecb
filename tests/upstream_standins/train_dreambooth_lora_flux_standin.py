"""A small stand-in for diffusers' `examples/dreambooth/train_dreambooth_lora_flux.py`, for tests.

Mirrors the interfaces `blockskip.integrations.diffusers` touches in huggingface/diffusers at
commit 58eb52c0803ea9af3abec60841c2a093bdf1f951 (written from scratch against them; no upstream
code is copied):

- module-top imports *by name*: `FluxTransformer2DModel`, `FluxPipeline`,
  `FlowMatchEulerDiscreteScheduler` from `diffusers`, and `compute_density_for_timestep_sampling`,
  `compute_loss_weighting_for_sd3`, `_collate_lora_metadata` from `diffusers.training_utils`;
- `parse_args()` with a plain `parser.parse_args()` (unknown flags fail) under the upstream flag
  names and defaults, and a module-level `args` set in the `__main__` block, read by the dataset;
- `DreamBoothDataset` resizing (bilinear, short side) and cropping (centre or random) every image
  to `--resolution` once at init, examples `{"instance_images", "instance_prompt"}` plus
  `{"class_images", "class_prompt"}` with prior preservation;
- `collate_fn(examples, with_prior_preservation)` returning `pixel_values` (instances, then class
  images) and `prompts`, given to `torch.utils.data.DataLoader(collate_fn=lambda examples: ...)`;
- `FluxTransformer2DModel.from_pretrained(path, subfolder="transformer", revision=, variant=)`, then
  `requires_grad_(False)`, `.to(device, dtype=weight_dtype)`, optional gradient checkpointing,
  `add_adapter(LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=...))` with
  the upstream default targets or `--lora_layers`;
- `accelerator.prepare(transformer, optimizer, train_dataloader, lr_scheduler)`, a save-state hook
  that checks `isinstance(model, type(unwrap_model(transformer)))` and saves with
  `FluxPipeline.save_lora_weights`, checkpoints every `--checkpointing_steps`;
- the loop `for step, batch in enumerate(train_dataloader)`: VAE encode, `noise = randn_like`,
  `u = compute_density_for_timestep_sampling(weighting_scheme=..., batch_size=bsz, ...)`,
  `indices = (u * num_train_timesteps).long()`, `timesteps = noise_scheduler_copy.timesteps[indices]`,
  sigmas looked up by timestep, packed latents, `timestep=timesteps / 1000`, SD3 loss weighting,
  prior-preservation chunking;
- intermediate validation through a module-level `log_validation(pipeline, args, accelerator,
  pipeline_args, epoch, torch_dtype, is_final_validation=False)` on a pipeline built around the
  training transformer; at the end `FluxPipeline.save_lora_weights(save_directory=...)`, then a
  fresh `FluxPipeline.from_pretrained(...)` and `pipeline.load_lora_weights(output_dir)`.

Differences, none of them in what the adapter touches: PIL instead of torchvision (whose wheel
does not install beside the CPU torch here); prompts encoded once with `FluxPipeline.encode_prompt`
on a text-only pipeline; validation images at `--resolution` with 2 inference steps; no hub,
tracker, text-encoder training, optimizer choice or lr-scheduler flags; and `--trace_file`, which
writes what each step used (for the tests).
"""

import argparse
import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.training_utils import (
    _collate_lora_metadata,
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)
from diffusers.utils.torch_utils import is_compiled_module
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from PIL.ImageOps import exif_transpose
from torch.utils.data import Dataset

DEFAULT_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
    "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]


def parse_args(input_args=None):
    parser = argparse.ArgumentParser(description="Stand-in for train_dreambooth_lora_flux.py")
    add = parser.add_argument
    add("--pretrained_model_name_or_path", type=str, required=True)
    add("--revision", type=str, default=None)
    add("--variant", type=str, default=None)
    add("--instance_data_dir", type=str, required=True)
    add("--instance_prompt", type=str, required=True)
    add("--class_data_dir", type=str, default=None)
    add("--class_prompt", type=str, default=None)
    add("--with_prior_preservation", action="store_true")
    add("--prior_loss_weight", type=float, default=1.0)
    add("--repeats", type=int, default=1)
    add("--max_sequence_length", type=int, default=512)
    add("--validation_prompt", type=str, default=None)
    add("--num_validation_images", type=int, default=4)
    add("--validation_epochs", type=int, default=50)
    add("--rank", type=int, default=4)
    add("--lora_alpha", type=int, default=4)
    add("--lora_layers", type=str, default=None)
    add("--output_dir", type=str, default="flux-dreambooth-lora")
    add("--seed", type=int, default=None)
    add("--resolution", type=int, default=512)
    add("--center_crop", action="store_true")
    add("--random_flip", action="store_true")
    add("--train_batch_size", type=int, default=4)
    add("--num_train_epochs", type=int, default=1)
    add("--max_train_steps", type=int, default=None)
    add("--checkpointing_steps", type=int, default=500)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--gradient_checkpointing", action="store_true")
    add("--learning_rate", type=float, default=1e-4)
    add("--guidance_scale", type=float, default=3.5)
    add("--dataloader_num_workers", type=int, default=0)
    add("--weighting_scheme", type=str, default="none", choices=["sigma_sqrt", "logit_normal", "mode", "cosmap", "none"])
    add("--logit_mean", type=float, default=0.0)
    add("--logit_std", type=float, default=1.0)
    add("--mode_scale", type=float, default=1.29)
    add("--max_grad_norm", type=float, default=1.0)
    add("--cache_latents", action="store_true", default=False)
    add("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"])
    add("--enable_npu_flash_attention", action="store_true")
    add("--trace_file", type=str, default=None)
    args = parser.parse_args(input_args) if input_args is not None else parser.parse_args()
    if args.with_prior_preservation and (args.class_data_dir is None or args.class_prompt is None):
        raise ValueError("prior preservation needs --class_data_dir and --class_prompt")
    return args


def _to_square_tensor(image, size, center_crop):
    """Short side to `size` (bilinear), then a centre or random `size` square, as a [-1, 1] tensor."""
    image = exif_transpose(image).convert("RGB")
    scale = size / min(image.size)
    image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BILINEAR)
    if center_crop:
        left, top = (image.width - size) // 2, (image.height - size) // 2
    else:
        left, top = random.randint(0, image.width - size), random.randint(0, image.height - size)
    image = image.crop((left, top, left + size, top + size))
    if args.random_flip and random.random() < 0.5:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class DreamBoothDataset(Dataset):
    def __init__(self, instance_data_root, instance_prompt, class_prompt, class_data_root=None, class_num=None,
                 size=1024, repeats=1, center_crop=False):
        self.instance_prompt, self.class_prompt = instance_prompt, class_prompt
        self.custom_instance_prompts = None
        paths = sorted(Path(instance_data_root).iterdir())
        self.instance_images = [Image.open(path) for path in paths for _ in range(repeats)]
        self.pixel_values = [_to_square_tensor(image, size, center_crop) for image in self.instance_images]
        self.num_instance_images = self._length = len(self.pixel_values)
        self.class_images = []
        if class_data_root is not None:
            class_paths = sorted(Path(class_data_root).iterdir())[:class_num]
            self.class_images = [_to_square_tensor(Image.open(path), size, center_crop) for path in class_paths]
            self._length = max(len(self.class_images), self.num_instance_images)

    def __len__(self):
        return self._length

    def __getitem__(self, index):
        example = {
            "instance_images": self.pixel_values[index % self.num_instance_images],
            "instance_prompt": self.instance_prompt,
        }
        if self.class_images:
            example["class_images"] = self.class_images[index % len(self.class_images)]
            example["class_prompt"] = self.class_prompt
        return example


def collate_fn(examples, with_prior_preservation=False):
    pixel_values = [example["instance_images"] for example in examples]
    prompts = [example["instance_prompt"] for example in examples]
    if with_prior_preservation:
        pixel_values += [example["class_images"] for example in examples]
        prompts += [example["class_prompt"] for example in examples]
    pixel_values = torch.stack(pixel_values).to(memory_format=torch.contiguous_format).float()
    return {"pixel_values": pixel_values, "prompts": prompts}


def log_validation(pipeline, args, accelerator, pipeline_args, epoch, torch_dtype, is_final_validation=False):
    pipeline = pipeline.to(accelerator.device, dtype=torch_dtype)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device=accelerator.device).manual_seed(args.seed) if args.seed is not None else None
    images = []
    with torch.no_grad():
        for _ in range(args.num_validation_images):
            images.append(pipeline(**pipeline_args, height=args.resolution, width=args.resolution,
                                   num_inference_steps=2, max_sequence_length=args.max_sequence_length,
                                   generator=generator).images[0])
    return images


def main(args):
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        project_config=ProjectConfiguration(project_dir=args.output_dir),
    )
    if args.seed is not None:
        set_seed(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(args.pretrained_model_name_or_path, subfolder="scheduler")
    noise_scheduler_copy = copy.deepcopy(noise_scheduler)
    text_pipeline = FluxPipeline.from_pretrained(args.pretrained_model_name_or_path, transformer=None, vae=None)
    vae = AutoencoderKL.from_pretrained(args.pretrained_model_name_or_path, subfolder="vae", revision=args.revision,
                                        variant=args.variant)
    transformer = FluxTransformer2DModel.from_pretrained(
        args.pretrained_model_name_or_path, subfolder="transformer", revision=args.revision, variant=args.variant
    )
    transformer.requires_grad_(False)
    vae.requires_grad_(False)

    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=weight_dtype)
    transformer.to(accelerator.device, dtype=weight_dtype)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()

    target_modules = [layer.strip() for layer in args.lora_layers.split(",")] if args.lora_layers else DEFAULT_TARGETS
    transformer.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                       target_modules=target_modules))

    def unwrap_model(model):
        model = accelerator.unwrap_model(model)
        return model._orig_mod if is_compiled_module(model) else model

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            layers, modules_to_save = None, {}
            for model in models:
                if not isinstance(model, type(unwrap_model(transformer))):
                    raise ValueError(f"unexpected save model: {model.__class__}")
                layers = get_peft_model_state_dict(model)
                modules_to_save["transformer"] = model
                weights.pop()
            FluxPipeline.save_lora_weights(output_dir, transformer_lora_layers=layers,
                                           **_collate_lora_metadata(modules_to_save))

    accelerator.register_save_state_pre_hook(save_model_hook)
    lora_parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_parameters, lr=args.learning_rate)

    train_dataset = DreamBoothDataset(
        instance_data_root=args.instance_data_dir,
        instance_prompt=args.instance_prompt,
        class_prompt=args.class_prompt,
        class_data_root=args.class_data_dir if args.with_prior_preservation else None,
        size=args.resolution,
        repeats=args.repeats,
        center_crop=args.center_crop,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.train_batch_size,
        shuffle=True,
        collate_fn=lambda examples: collate_fn(examples, args.with_prior_preservation),
        num_workers=args.dataloader_num_workers,
    )

    def compute_text_embeddings(prompt):
        with torch.no_grad():
            return text_pipeline.encode_prompt(prompt=prompt, prompt_2=prompt, max_sequence_length=args.max_sequence_length)

    instance_embeddings = compute_text_embeddings(args.instance_prompt)
    class_embeddings = compute_text_embeddings(args.class_prompt) if args.with_prior_preservation else None

    if args.cache_latents:
        latents_cache = []
        for batch in train_dataloader:
            with torch.no_grad():
                latents_cache.append(vae.encode(batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)).latent_dist)

    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    transformer, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        transformer, optimizer, train_dataloader, lr_scheduler
    )

    def get_sigmas(timesteps, n_dim=4, dtype=torch.float32):
        sigmas = noise_scheduler_copy.sigmas.to(device=accelerator.device, dtype=dtype)
        schedule_timesteps = noise_scheduler_copy.timesteps.to(accelerator.device)
        step_indices = [(schedule_timesteps == t).nonzero().item() for t in timesteps.to(accelerator.device)]
        sigma = sigmas[step_indices].flatten()
        while sigma.ndim < n_dim:
            sigma = sigma.unsqueeze(-1)
        return sigma

    trace, global_step = [], 0
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
    for epoch in range(args.num_train_epochs):
        transformer.train()
        for step, batch in enumerate(train_dataloader):
            with accelerator.accumulate([transformer]):
                embeddings = [instance_embeddings] + ([class_embeddings] if args.with_prior_preservation else [])
                count = len(batch["prompts"]) // len(embeddings)
                prompt_embeds, pooled_prompt_embeds = (
                    torch.cat([e[i].expand(count, *e[i].shape[1:]) for e in embeddings]) for i in (0, 1)
                )
                text_ids = instance_embeddings[2]

                if args.cache_latents:
                    model_input = latents_cache[step].sample()
                else:
                    model_input = vae.encode(batch["pixel_values"].to(dtype=vae.dtype)).latent_dist.sample()
                model_input = ((model_input - shift) * scale).to(dtype=weight_dtype)
                latent_image_ids = FluxPipeline._prepare_latent_image_ids(
                    model_input.shape[0], model_input.shape[2] // 2, model_input.shape[3] // 2,
                    accelerator.device, weight_dtype,
                )
                noise = torch.randn_like(model_input)
                bsz = model_input.shape[0]
                u = compute_density_for_timestep_sampling(
                    weighting_scheme=args.weighting_scheme,
                    batch_size=bsz,
                    logit_mean=args.logit_mean,
                    logit_std=args.logit_std,
                    mode_scale=args.mode_scale,
                )
                indices = (u * noise_scheduler_copy.config.num_train_timesteps).long()
                timesteps = noise_scheduler_copy.timesteps[indices].to(device=model_input.device)
                sigmas = get_sigmas(timesteps, n_dim=model_input.ndim, dtype=model_input.dtype)
                noisy_model_input = (1.0 - sigmas) * model_input + sigmas * noise
                packed = FluxPipeline._pack_latents(noisy_model_input, *model_input.shape)
                guidance = None
                if unwrap_model(transformer).config.guidance_embeds:
                    guidance = torch.tensor([args.guidance_scale], device=accelerator.device).expand(bsz)
                model_pred = transformer(
                    hidden_states=packed,
                    timestep=timesteps / 1000,
                    guidance=guidance,
                    pooled_projections=pooled_prompt_embeds,
                    encoder_hidden_states=prompt_embeds,
                    txt_ids=text_ids,
                    img_ids=latent_image_ids,
                    return_dict=False,
                )[0]
                model_pred = FluxPipeline._unpack_latents(
                    model_pred, height=model_input.shape[2] * vae_scale_factor,
                    width=model_input.shape[3] * vae_scale_factor, vae_scale_factor=vae_scale_factor,
                )
                weighting = compute_loss_weighting_for_sd3(weighting_scheme=args.weighting_scheme, sigmas=sigmas)
                target = noise - model_input
                losses = (weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(bsz, -1).mean(1)
                if args.with_prior_preservation:
                    instance_loss, prior_loss = torch.chunk(losses, 2)
                    loss = instance_loss.mean() + args.prior_loss_weight * prior_loss.mean()
                else:
                    loss = losses.mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            trace.append({
                "step": global_step,
                "u": u.tolist(),
                "sigmas": sigmas.flatten().tolist(),
                "pixel_shape": list(batch["pixel_values"].shape),
                "loss": loss.item(),
                **{key: batch[key].tolist() for key in ("noise_level", "crop_box") if key in batch},
            })
            if accelerator.sync_gradients:
                global_step += 1
                if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                    accelerator.save_state(str(Path(args.output_dir) / f"checkpoint-{global_step}"))
            if global_step >= args.max_train_steps:
                break

        if accelerator.is_main_process and args.validation_prompt is not None and epoch % args.validation_epochs == 0:
            pipeline = FluxPipeline.from_pretrained(
                args.pretrained_model_name_or_path, vae=vae, text_encoder=text_pipeline.text_encoder,
                text_encoder_2=text_pipeline.text_encoder_2, transformer=unwrap_model(transformer),
                revision=args.revision, variant=args.variant, torch_dtype=weight_dtype,
            )
            images = log_validation(pipeline, args, accelerator, {"prompt": args.validation_prompt}, epoch, weight_dtype)
            trace.append({"validation_epoch": epoch, "images": len(images)})
            del pipeline

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        transformer = unwrap_model(transformer).to(weight_dtype)
        FluxPipeline.save_lora_weights(
            save_directory=args.output_dir,
            transformer_lora_layers=get_peft_model_state_dict(transformer),
            **_collate_lora_metadata({"transformer": transformer}),
        )
        pipeline = FluxPipeline.from_pretrained(args.pretrained_model_name_or_path, revision=args.revision,
                                                variant=args.variant, torch_dtype=weight_dtype)
        pipeline.load_lora_weights(args.output_dir)
        if args.validation_prompt and args.num_validation_images > 0:
            images = log_validation(pipeline, args, accelerator, {"prompt": args.validation_prompt}, epoch,
                                    weight_dtype, is_final_validation=True)
            trace.append({"final_validation_images": len(images)})
        if args.trace_file:
            Path(args.trace_file).write_text(json.dumps(trace, indent=1))
    accelerator.end_training()


if __name__ == "__main__":
    args = parse_args()
    main(args)
