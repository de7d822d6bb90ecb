"""Stand-in for `simpletuner.helpers.models.common`: the `ModelFoundation` methods the adapter touches."""

from enum import Enum

import torch
import torch.nn.functional as F


class PipelineTypes(Enum):
    TEXT2IMG = "text2img"


class ModelTypes(Enum):
    TRANSFORMER = "transformer"


class PredictionTypes(Enum):
    FLOW_MATCHING = "flow_matching"


class ModelFoundation:
    MODEL_CLASS = None
    MODEL_SUBFOLDER = "transformer"
    MODEL_TYPE = ModelTypes.TRANSFORMER
    PIPELINE_CLASSES = {}
    DEFAULT_LORA_TARGET = []
    DEFAULT_LORA_EXCLUDE_TARGETS = None

    def __init__(self, config, accelerator):
        self.config, self.accelerator = config, accelerator
        self.model = None
        self.noise_schedule = None
        self.pipelines = {}

    def unwrap_model(self, model=None):
        model = self.model if model is None else model
        return getattr(model, "module", model)

    def get_trained_component(self, unwrap_model: bool = True):
        return self.unwrap_model() if unwrap_model else self.model

    def load_model(self, move_to_device: bool = True):
        path = self.config.pretrained_transformer_model_name_or_path or self.config.pretrained_model_name_or_path
        self.model = self.MODEL_CLASS.from_pretrained(
            path, subfolder=self.MODEL_SUBFOLDER, torch_dtype=self.config.weight_dtype, use_safetensors=True
        )
        if move_to_device:
            self.model.to(self.accelerator.device, dtype=self.config.weight_dtype)
        if self.config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()

    def get_lora_target_layers(self):
        if self.config.peft_lora_target_modules:
            return [name.strip() for name in self.config.peft_lora_target_modules.split(",")]
        return self.DEFAULT_LORA_TARGET

    def add_lora_adapter(self):
        from peft import LoraConfig

        self.lora_config = LoraConfig(
            r=self.config.lora_rank,
            lora_alpha=self.config.lora_alpha if self.config.lora_alpha is not None else self.config.lora_rank,
            lora_dropout=self.config.lora_dropout,
            init_lora_weights="gaussian",  # upstream passes --lora_initialisation_style; tests want nonzero B
            target_modules=self.get_lora_target_layers(),
            exclude_modules=self.DEFAULT_LORA_EXCLUDE_TARGETS,
        )
        self.model.add_adapter(self.lora_config)

    def get_pipeline(self, pipeline_type=PipelineTypes.TEXT2IMG, load_base_model: bool = True):
        """Upstream builds (and caches) the family's pipeline class around the trained transformer."""
        if self.pipelines.get(pipeline_type) is None:
            self.pipelines[pipeline_type] = self.PIPELINE_CLASSES[pipeline_type].from_pretrained(
                self.config.pretrained_model_name_or_path, transformer=self.unwrap_model(), torch_dtype=self.config.weight_dtype
            )
        return self.pipelines[pipeline_type]

    def save_lora_weights(self, *args, **kwargs):
        save_directory = args[0] if args else kwargs.pop("save_directory")
        self.PIPELINE_CLASSES[PipelineTypes.TEXT2IMG].save_lora_weights(save_directory=save_directory, **kwargs)

    # -- batches ------------------------------------------------------------------------------
    def sample_flow_sigmas(self, batch: dict, state: dict):
        bsz = batch["latents"].shape[0]
        if self.config.flow_use_uniform_schedule:
            sigmas = torch.rand((bsz,), device=self.accelerator.device)
        else:
            normal = torch.randn((bsz,), device=self.accelerator.device)
            sigmas = torch.sigmoid(self.config.flow_sigmoid_scale * normal)
        shift = self.config.flow_schedule_shift
        if not shift and self.config.flow_schedule_auto_shift:
            height, width = batch["noise"].shape[-2:]  # upstream: the resolution-dependent FLUX shift
            seq_len = (height // 2) * (width // 2)
            mu = 0.5 + (1.15 - 0.5) * (seq_len - 256) / (4096 - 256)
            shift = float(torch.exp(torch.tensor(mu)))
        if shift:
            sigmas = (sigmas * shift) / (1 + (shift - 1) * sigmas)
        return sigmas, sigmas * 1000.0

    def prepare_batch_conditions(self, batch: dict, state: dict) -> dict:
        return batch

    def prepare_batch(self, batch: dict, state: dict) -> dict:
        if not batch:
            return batch
        target = {"device": self.accelerator.device, "dtype": self.config.weight_dtype}
        batch["encoder_hidden_states"] = batch["prompt_embeds"].to(**target)
        latents = batch.get("latent_batch")
        if not hasattr(latents, "to"):
            raise ValueError("Received invalid value for latents.")
        batch["latents"] = latents.to(**target)
        noise = torch.randn_like(batch["latents"])
        batch["noise"] = batch["input_noise"] = noise
        batch["sigmas"], batch["timesteps"] = self.sample_flow_sigmas(batch=batch, state=state)
        grid = batch["sigmas"].reshape(-1, 1, 1, 1).to(batch["latents"].dtype)
        batch["sigmas"] = grid
        batch["noisy_latents"] = (1.0 - grid) * batch["latents"] + grid * batch["input_noise"]
        return self.prepare_batch_conditions(batch=batch, state=state)

    def loss(self, prepared_batch: dict, model_output, apply_conditioning_mask: bool = True):
        target = prepared_batch["noise"] - prepared_batch["latents"]
        return F.mse_loss(model_output["model_prediction"].float(), target.float())


class ImageModelFoundation(ModelFoundation):
    pass
