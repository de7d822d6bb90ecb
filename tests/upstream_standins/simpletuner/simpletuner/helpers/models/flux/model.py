"""Stand-in for `simpletuner.helpers.models.flux.model.Flux`."""

import torch

from simpletuner.helpers.models.common import ImageModelFoundation, PipelineTypes
from simpletuner.helpers.models.flux import pack_latents, prepare_latent_image_ids, unpack_latents
from simpletuner.helpers.models.flux.pipeline import FluxPipeline
from simpletuner.helpers.models.flux.transformer import FluxTransformer2DModel

_ALL = ["to_k", "to_q", "to_v", "to_qkv", "add_qkv_proj", "add_k_proj", "add_q_proj", "add_v_proj", "to_out.0",
        "to_add_out"]


class Flux(ImageModelFoundation):
    MODEL_CLASS = FluxTransformer2DModel
    MODEL_SUBFOLDER = "transformer"
    PIPELINE_CLASSES = {PipelineTypes.TEXT2IMG: FluxPipeline}
    DEFAULT_LORA_TARGET = ["to_k", "to_q", "to_v", "to_out.0", "to_qkv"]

    def get_lora_target_layers(self):
        manual = super().get_lora_target_layers() if self.config.peft_lora_target_modules else None
        if manual:
            return manual
        target = self.config.flux_lora_target
        if target == "all":
            return list(_ALL)
        if target == "all+ffs":
            return _ALL + ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp",
                           "proj_out"]
        if target == "tiny":
            return ["single_transformer_blocks.7.proj_out", "single_transformer_blocks.20.proj_out"]
        if target == "nano":
            return ["single_transformer_blocks.7.proj_out"]
        return self.DEFAULT_LORA_TARGET

    def model_predict(self, prepared_batch):
        latents = prepared_batch["latents"]
        b, c, h, w = latents.shape
        packed = pack_latents(prepared_batch["noisy_latents"], b, c, h, w).to(self.config.weight_dtype)
        guidance = None
        if self.get_trained_component().config.guidance_embeds:
            guidance = torch.full((b,), self.config.flux_guidance_value, device=latents.device)
        img_ids = prepare_latent_image_ids(b, h, w, latents.device, self.config.weight_dtype)
        txt_ids = torch.zeros(prepared_batch["prompt_embeds"].shape[1], 3, device=latents.device)
        prediction = self.model(
            hidden_states=packed,
            timestep=prepared_batch["timesteps"] / 1000,
            guidance=guidance,
            pooled_projections=prepared_batch["add_text_embeds"].to(self.config.weight_dtype),
            encoder_hidden_states=prepared_batch["prompt_embeds"].to(self.config.weight_dtype),
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        return {"model_prediction": unpack_latents(prediction, height=h * 8, width=w * 8, vae_scale_factor=16)}
