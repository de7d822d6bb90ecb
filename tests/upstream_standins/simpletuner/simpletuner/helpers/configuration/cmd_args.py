"""Stand-in for `simpletuner.helpers.configuration.cmd_args`: an argparse parser that rejects unknown options."""

import argparse


def _bool(value):
    return str(value).lower() in ("1", "true", "yes", "on")


OPTIONS = {
    # name: (type, default)
    "model_family": (str, None), "model_type": (str, "full"), "lora_type": (str, "standard"),
    "model_flavour": (str, None), "pretrained_model_name_or_path": (str, None),
    "pretrained_transformer_model_name_or_path": (str, None), "output_dir": (str, None),
    "data_backend_config": (str, None), "train_batch_size": (int, 1), "max_train_steps": (int, 1),
    "checkpointing_steps": (int, 0), "learning_rate": (float, 1e-4), "lora_rank": (int, 4),
    "lora_alpha": (float, None), "lora_dropout": (float, 0.0), "lora_initialisation_style": (str, "default"),
    "seed": (int, 0), "mixed_precision": (str, "no"), "base_model_precision": (str, "no_change"),
    "quantize_via": (str, "accelerator"), "flux_lora_target": (str, "all"), "peft_lora_target_modules": (str, None),
    "tread_config": (str, None), "diffusion_blocks_config": (str, None), "musubi_blocks_to_swap": (int, 0),
    "ramtorch": (_bool, False), "crepa_enabled": (_bool, False), "layersync_enabled": (_bool, False),
    "mixflow_enabled": (_bool, False), "scheduled_sampling_max_step_offset": (int, 0),
    "distillation_method": (str, None), "controlnet": (_bool, False), "control": (_bool, False),
    "gradient_checkpointing": (_bool, True), "flow_schedule_shift": (float, None),
    "flow_schedule_auto_shift": (_bool, False), "flow_use_uniform_schedule": (_bool, False),
    "flow_sigmoid_scale": (float, 1.0), "optimizer": (str, "torch-adamw"), "flux_guidance_value": (float, 1.0),
    "tokenizer_max_length": (int, 512), "validation_prompt": (str, None), "validation_resolution": (int, 256),
    "validation_num_inference_steps": (int, 2),
}


def get_argument_parser():
    parser = argparse.ArgumentParser(exit_on_error=False)
    for name, (kind, default) in OPTIONS.items():
        if kind is _bool:
            parser.add_argument(f"--{name}", nargs="?", const=True, type=_bool, default=default)
        else:
            parser.add_argument(f"--{name}", type=kind, default=default)
    return parser


def parse_cmdline_args(input_args=None, exit_on_error=False):
    return get_argument_parser().parse_args(input_args)
