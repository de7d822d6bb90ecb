"""Stand-in for `simpletuner.helpers.training.trainer.Trainer`: config parsing, the `init_*` sequence, the loop."""

import json
import os
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from PIL import Image

from simpletuner.helpers.configuration.loader import load_config
from simpletuner.helpers.models.registry import ModelRegistry

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, config: dict = None, disable_accelerator: bool = False, job_id: str = None,
                 exit_on_error: bool = False):
        self.config = load_config(config, exit_on_error=exit_on_error)
        self.config.weight_dtype = _DTYPES.get(self.config.mixed_precision, torch.float32)
        self.accelerator = Accelerator(mixed_precision=self.config.mixed_precision, cpu=not torch.cuda.is_available())
        self.model = None
        if self.config.model_family in ModelRegistry.model_families():
            self.model = ModelRegistry.model_families()[self.config.model_family](self.config, self.accelerator)
        self.state = {"global_step": 0}
        self.trace = []  # stand-in only: what each step used

    def run(self):
        self.init_seed()
        self.init_preprocessing_models()
        self.init_data_backend()
        self.init_unload_text_encoder()
        self.init_unload_vae()
        self.init_load_base_model()
        self.init_precision()
        self.init_tread_model()
        self.init_diffusion_blocks_model()
        self.init_freeze_models()
        self.init_trainable_peft_adapter()
        self.move_models(destination="accelerator")
        self.resume_and_prepare()
        self.train()

    # -- set-up -------------------------------------------------------------------------------
    def init_seed(self):
        if self.config.seed:
            set_seed(self.config.seed)

    def init_preprocessing_models(self):
        from diffusers import AutoencoderKL, FluxPipeline

        path = self.config.pretrained_model_name_or_path
        self.vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
        self.text_pipeline = FluxPipeline.from_pretrained(path, transformer=None, vae=None)

    def init_data_backend(self):
        """VAE and text-embed caches: every image resized and encoded once (crops fixed at cache time)."""
        backends = json.loads(Path(self.config.data_backend_config).read_text())
        dataset = next(backend for backend in backends if backend.get("dataset_type", "image") == "image")
        resolution = int(dataset["resolution"])
        self.latent_cache = []
        with torch.no_grad():
            for file in sorted(Path(dataset["instance_data_dir"]).glob("*.png")):
                image = Image.open(file).convert("RGB")
                scale = resolution / min(image.size)
                width, height = (int(side * scale) // 16 * 16 for side in image.size)
                image = image.resize((width, height), Image.BILINEAR)
                pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()[None] / 127.5 - 1
                latents = self.vae.encode(pixels).latent_dist.sample()
                latents = (latents - self.vae.config.shift_factor) * self.vae.config.scaling_factor
                self.latent_cache.append(latents[0])
            prompt_embeds, pooled, _ = self.text_pipeline.encode_prompt(
                dataset["instance_prompt"], prompt_2=None, max_sequence_length=self.config.tokenizer_max_length
            )
        self.text_cache = {"prompt_embeds": prompt_embeds[0], "add_text_embeds": pooled[0]}

    def init_unload_text_encoder(self):
        self.text_pipeline = None

    def init_unload_vae(self):
        self.vae = None

    def init_load_base_model(self):
        self.model.load_model(move_to_device=False)

    def init_precision(self):
        pass  # upstream: quanto/torchao quantization of the module tree for non-default presets

    def init_tread_model(self):
        if self.config.tread_config:
            raise NotImplementedError("the stand-in has no TREAD")

    def init_diffusion_blocks_model(self):
        if self.config.diffusion_blocks_config:
            raise NotImplementedError("the stand-in has no DiffusionBlocks")

    def init_freeze_models(self):
        self.model.model.requires_grad_(False)

    def init_trainable_peft_adapter(self):
        self.model.add_lora_adapter()

    def move_models(self, destination: str = "accelerator"):
        self.model.model.to(self.accelerator.device, dtype=self.config.weight_dtype)

    def resume_and_prepare(self):
        params = [p for p in self.model.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.learning_rate)
        batches = [self.latent_cache[i : i + self.config.train_batch_size]
                   for i in range(0, len(self.latent_cache), self.config.train_batch_size)]
        self.batches = [b for b in batches if len(b) == self.config.train_batch_size]
        self.accelerator.register_save_state_pre_hook(self.save_model_hook)
        self.model.model, self.optimizer = self.accelerator.prepare(self.model.model, self.optimizer)

    def save_model_hook(self, models, weights, output_dir):
        from peft.utils import get_peft_model_state_dict

        for model in models:
            layers = get_peft_model_state_dict(self.accelerator.unwrap_model(model))
            self.model.save_lora_weights(output_dir, transformer_lora_layers=layers)
            if weights:
                weights.pop()

    def _collate(self, latents):
        size = len(latents)
        return {
            "latent_batch": torch.stack(latents),
            "prompt_embeds": self.text_cache["prompt_embeds"].expand(size, -1, -1),
            "add_text_embeds": self.text_cache["add_text_embeds"].expand(size, -1),
            "encoder_attention_mask": None,
            "conditioning_latents": None,
            "conditioning_pixel_values": None,
        }

    # -- the loop -----------------------------------------------------------------------------
    def train(self):
        self.model.model.train()
        while self.state["global_step"] < self.config.max_train_steps:
            for step, latents in enumerate(self.batches):
                batch = self._collate(latents)
                prepared_batch = self.model.prepare_batch(batch, self.state)
                model_output = self.model.model_predict(prepared_batch)
                loss = self.model.loss(prepared_batch, model_output)
                self.accelerator.backward(loss)
                self.optimizer.step()
                self.optimizer.zero_grad()
                self.state["global_step"] += 1
                self.trace.append({
                    "latent_shape": list(prepared_batch["latents"].shape),
                    "sigmas": prepared_batch["sigmas"].reshape(-1).tolist(),
                    "timesteps": prepared_batch["timesteps"].reshape(-1).tolist(),
                    "loss": float(loss.detach()),
                })
                every = self.config.checkpointing_steps
                if every and self.state["global_step"] % every == 0:
                    self.accelerator.save_state(os.path.join(self.config.output_dir, f"checkpoint-{self.state['global_step']}"))
                if self.state["global_step"] >= self.config.max_train_steps:
                    break
        from peft.utils import get_peft_model_state_dict

        transformer = self.accelerator.unwrap_model(self.model.model)
        self.model.save_lora_weights(self.config.output_dir, transformer_lora_layers=get_peft_model_state_dict(transformer))
        if self.config.validation_prompt:
            self.validate()

    def validate(self):
        """Upstream's Validation: the family's pipeline around the training transformer, then one image per prompt."""
        from simpletuner.helpers.models.common import PipelineTypes

        self.model.pipeline = self.model.get_pipeline(pipeline_type=PipelineTypes.TEXT2IMG, load_base_model=False)
        self.model.pipeline.set_progress_bar_config(disable=True)
        side = self.config.validation_resolution
        with torch.no_grad():
            images = self.model.pipeline(prompt=self.config.validation_prompt, height=side, width=side,
                                         num_inference_steps=self.config.validation_num_inference_steps,
                                         max_sequence_length=self.config.tokenizer_max_length,
                                         generator=torch.Generator().manual_seed(self.config.seed)).images
        self.trace.append({"validation_images": len(images)})
